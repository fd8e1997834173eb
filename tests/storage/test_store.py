"""The store facade: its methods are its role objects' own, a second client shares the script
registry, and pub/sub comes back decoded through a Subscription."""

from __future__ import annotations

import redis.asyncio as aredis

from conveyor.storage.store import Store


async def test_the_facade_methods_are_the_role_objects_bound_methods(store: Store) -> None:
    assert store.read == store.streams.read
    assert store.commit == store.commits.commit
    assert store.cancel == store.control.cancel
    assert store.replay == store.dead.replay
    assert store.start_many == store.starts.start_many
    assert store.streams.scripts is store.scripts is store.commits.scripts


async def test_with_client_shares_the_scripts_on_another_connection(
    store: Store, redis: aredis.Redis
) -> None:
    other = store.with_client(redis)
    assert other.scripts is store.scripts and other.redis is redis
    assert other.settings is store.settings
    workflow_id, created = await other.start("flow", "first", "q")
    assert created
    assert (await store.get(workflow_id)).workflow == "flow"


async def test_a_subscription_delivers_decoded_messages(store: Store) -> None:
    channel = store.keys.finished_channel(0)
    subscription = store.subscription()
    await subscription.subscribe(channel)
    try:
        await store.redis.publish(channel, b"wf-1")
        message = None
        for _ in range(50):  # each call waits up to 0.1 s for the message
            message = await subscription.message(timeout=0.1)
            if message is not None:
                break
        assert message == "wf-1"
        assert await subscription.message(timeout=0.01) is None
    finally:
        await subscription.close()
