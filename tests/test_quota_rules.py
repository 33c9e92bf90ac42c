"""The pure quota decisions (cgpop/store/quota_rules.py), the SIZE grammar of `cgpop quota
set`, and the `[quota]` configuration section."""

from __future__ import annotations

import argparse

import pytest

from cgpop import config
from cgpop.cli.quota import parse_count, parse_size
from cgpop.reload import reloadable
from cgpop.store.api import OverQuota
from cgpop.store.quota_rules import Root, admit, warning

MB = 1 << 20


def test_the_issue_example_text() -> None:
    after = Root("joe@example.com", 460 * MB, 1, 500 * MB, None)
    assert warning((440 * MB, 0), after, 90) == "Mailbox is 92% full: 460 MB of 500 MB"


def test_warning_only_when_crossing() -> None:
    root = Root("joe@example.com", 95, 0, 100, None)
    assert warning((89, 0), root, 90) == "Mailbox is 95% full: 95 bytes of 100 bytes"
    assert warning((90, 0), root, 90) is None  # was already at 90 %
    assert warning((89, 0), Root("j", 89, 0, 100, None), 90) is None  # not there yet
    assert warning((89, 0), root, None) is None


def test_message_count_warning_and_the_higher_share_wins() -> None:
    both = Root("j", 91, 10, 100, 10)
    assert warning((80, 8), both, 90) == "Mailbox is 100% full: 10 of 10 messages"
    assert warning((0, 0), Root("j", 0, 1, None, 1), 90) == "Mailbox is 100% full: 1 of 1 messages"
    big = Root("j", 3 << 30, 0, 3 << 30, None)
    assert warning((0, 0), big, 90) == "Mailbox is 100% full: 3 GB of 3 GB"


def test_admit_up_to_exactly_the_limit_account_first_then_domain() -> None:
    joe = Root("joe@example.com", 0, 0, 10, None)
    ann = Root("ann@example.com", 0, 0, None, None)
    dom = Root("example.com", 0, 0, 15, None)
    got = admit([(joe, dom, 6), (joe, dom, 4), (joe, dom, 1), None, (ann, dom, 5), (ann, dom, 1)])
    assert got == [None, None, OverQuota("joe@example.com"), None, None, OverQuota("example.com")]
    assert (joe.storage, joe.messages, ann.storage, dom.storage) == (10, 2, 5, 15)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("1500", 1500), ("10K", 10240), ("500M", 500 * MB), ("2g", 2 << 30), ("none", None)],
)
def test_sizes(text: str, value: int | None) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "1.5G", "-1", "10T", "M", "1 K", "99999999999G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_counts() -> None:
    assert (parse_count("0"), parse_count("NONE")) == (0, None)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count("1K")


def test_quota_section() -> None:
    assert config.Config().quota == config.QuotaConfig("tempfail", 90)
    got = config.from_dict({"quota": {"over_quota": "reject", "warn_percent": 80}}).quota
    assert got == config.QuotaConfig("reject", 80)
    with pytest.raises(config.ConfigError, match=r"quota\.over_quota: must be one of"):
        config.from_dict({"quota": {"over_quota": "bounce"}})
    with pytest.raises(config.ConfigError, match=r"quota\.warn_percent"):
        config.from_dict({"quota": {"warn_percent": 0}})
    with pytest.raises(config.ConfigError, match=r"quota\.limit: unknown key"):
        config.from_dict({"quota": {"limit": 1}})
    assert reloadable("quota.over_quota") and reloadable("quota.warn_percent")
