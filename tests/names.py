"""Names as a command line hands them over, for tests that a reader compares names by value."""


def run_time_name(text: str) -> str:
    """``text`` built at run time (as argparse gives it): equal to the literal, not the interned object."""
    built = "".join(list(text))
    assert built == text and built is not text
    return built
