"""conveyor.testing: what users' own tests use."""

from conveyor import App, AsyncClient, Workflow
from conveyor.testing import embedded_redis, run_until_idle


async def test_embedded_redis_and_run_until_idle() -> None:
    wf = Workflow("mine")

    @wf.step(retries=1, backoff=0.01)
    def step(ctx, x):
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return x * 3

    with embedded_redis() as url:
        app = App([wf], redis_url=url, partitions=2)
        async with AsyncClient(app=app) as client:
            wf_id = await client.start("mine", 5)
            stats = await run_until_idle(app)
            assert (stats.completed, stats.retried) == (1, 1)
            assert await client.result(wf_id, timeout=1) == 15
