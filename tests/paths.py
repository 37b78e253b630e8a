"""Where the tests find the checkout, wherever in tests/ a test module sits."""
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
