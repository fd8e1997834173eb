"""The ``conveyor`` command line."""


def main() -> None:
    from .main import run

    run()
