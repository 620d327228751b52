"""trust/login_throttle.py: the lock-out policy (pure) and the per-account ledger of failures
in a service's database — concurrent failures all counted, a lock before any password check,
unknown names throttled alike, a success resets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import MetaData

from servicekit.storage import make_engine
from trust.login_throttle import AccountLocked, LoginThrottle, ThrottlePolicy, throttle_table


@given(st.integers(min_value=0, max_value=200))
def test_policy_is_free_then_doubling_then_capped(failures: int) -> None:
    policy = ThrottlePolicy(free_failures=5, base_lockout=60, max_lockout=3600)
    lock = policy.lockout_after(failures)
    if failures < 5:
        assert lock == 0
    else:
        assert lock == min(60 * 2 ** (failures - 5), 3600)
        assert lock >= policy.lockout_after(failures - 1)


def test_failures_are_counted_under_concurrency_and_lock_the_account(db_url: str) -> None:
    metadata = MetaData()
    table = throttle_table("t_login_throttle", metadata)
    engine = make_engine(db_url)
    metadata.create_all(engine)
    throttle = LoginThrottle(engine, table, ThrottlePolicy(3, 60, 3600))
    with ThreadPoolExecutor(8) as pool:
        counts = sorted(pool.map(lambda _: throttle.failed("Anna"), range(8)))
    assert counts == list(range(1, 9))  # each failure counted once, none lost
    with pytest.raises(AccountLocked) as locked:
        throttle.check(" anna ")  # the same account, however the name is typed
    assert locked.value.status == 429 and locked.value.headers["Retry-After"] == "1920"
    throttle.check("someone-else")  # other accounts are not affected
    throttle.succeeded("anna")
    throttle.check("anna")
    engine.dispose()
