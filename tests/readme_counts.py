"""A pytest plugin for tests/test_readme.py: after collection, print how many tests there are and how
many would skip without ../shared (their skipif reason names it). Not a test module itself."""


def pytest_collection_finish(session):
    shared = [item for item in session.items
              if any("../shared/" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))]
    print(f"COUNTS {len(session.items)} {len(shared)}")
