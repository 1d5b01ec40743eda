"""The checks the Triton client scripts of tests/serve.rs share (imported from beside them)."""

import sys

from tritonclient.utils import InferenceServerException


def check(cond, what):
    """Exits non-zero with `what` unless `cond`."""
    if not cond:
        sys.exit(f"check failed: {what}")


def expect_error(fn, fragment):
    """Calls `fn`, which must raise the client's error mentioning `fragment`; returns its text."""
    try:
        fn()
    except InferenceServerException as e:
        check(fragment in str(e), f"error {e!r} should mention {fragment!r}")
        return str(e)
    sys.exit(f"expected an error mentioning {fragment!r}")
