"""A pytest plugin for tests/test_readme.py: after collection, print how many tests there are, how
many would skip without ../shared and how many without a CUDA device (their skipif reasons name
them). Not a test module itself."""


def skipping(session, words: str) -> int:
    return sum(any(words in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))
               for item in session.items)


def pytest_collection_finish(session):
    print(f"COUNTS {len(session.items)} {skipping(session, '../shared/')} {skipping(session, 'CUDA device')}")
