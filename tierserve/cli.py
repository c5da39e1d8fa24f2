"""The tierserve command line."""

def main() -> None:
    pass
