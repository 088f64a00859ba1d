"""Standard Webhooks verification, proved against the independent ``standardwebhooks`` package."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from archiver.webhooks import SeenDeliveries, WebhookRejected, decode_secret, sign, verify

SECRET = "whsec_" + base64.b64encode(b"archiver-test-webhook-key-32byte").decode()
OTHER = "whsec_" + base64.b64encode(b"some-other-webhook-key-32-bytes!").decode()
BODY = b'{"type":"response.completed","data":{"id":"resp_abc"}}'
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def headers(secret: str, msg_id: str, at: datetime, body: bytes = BODY) -> dict[str, str]:
    """Headers as a Standard Webhooks sender makes them, signed by the reference package."""
    signature = standardwebhooks.Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_a_delivery_signed_by_the_reference_package_verifies() -> None:
    delivery = verify(decode_secret(SECRET), headers(SECRET, "msg_1", NOW), BODY, now=NOW.timestamp())
    assert delivery.webhook_id == "msg_1" and delivery.timestamp == int(NOW.timestamp())


def test_our_signature_verifies_in_the_reference_package() -> None:
    at = datetime.now(UTC)
    ours = sign(decode_secret(SECRET), "msg_2", int(at.timestamp()), BODY)
    sent = {"webhook-id": "msg_2", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": ours}
    assert standardwebhooks.Webhook(SECRET).verify(BODY, sent) == {
        "type": "response.completed",
        "data": {"id": "resp_abc"},
    }
    assert ours == standardwebhooks.Webhook(SECRET).sign("msg_2", at, BODY.decode())


def test_header_names_are_case_insensitive_and_a_secret_without_prefix_works() -> None:
    sent = {k.title(): v for k, v in headers(SECRET, "msg_3", NOW).items()}
    key = decode_secret(SECRET.removeprefix("whsec_"))
    assert verify(key, sent, BODY, now=NOW.timestamp()).webhook_id == "msg_3"


def test_one_matching_entry_among_several_is_enough() -> None:
    good = headers(SECRET, "msg_4", NOW)
    bad = headers(OTHER, "msg_4", NOW)["webhook-signature"]
    good["webhook-signature"] = f"v1a,abcd {bad} v1,!!notbase64 {good['webhook-signature']}"
    assert verify(decode_secret(SECRET), good, BODY, now=NOW.timestamp()).webhook_id == "msg_4"


@pytest.mark.parametrize(
    "change",
    ["other secret", "tampered body", "other id", "other timestamp", "v2 scheme", "no v1 entry"],
)
def test_a_bad_signature_is_refused_with_401(change: str) -> None:
    key = decode_secret(SECRET)
    sent = headers(OTHER if change == "other secret" else SECRET, "msg_5", NOW)
    body = BODY
    if change == "tampered body":
        body = BODY.replace(b"resp_abc", b"resp_abd")
    elif change == "other id":
        sent["webhook-id"] = "msg_6"
    elif change == "other timestamp":
        sent["webhook-timestamp"] = str(int(NOW.timestamp()) + 1)
    elif change == "v2 scheme":
        sent["webhook-signature"] = sent["webhook-signature"].replace("v1,", "v2,")
    elif change == "no v1 entry":
        sent["webhook-signature"] = "v1"
    with pytest.raises(WebhookRejected) as caught:
        verify(key, sent, body, now=NOW.timestamp())
    assert caught.value.status == 401


@pytest.mark.parametrize("minutes", [6, -6])
def test_a_timestamp_six_minutes_off_is_refused(minutes: int) -> None:
    at = NOW - timedelta(minutes=minutes)
    sent = headers(SECRET, "msg_7", at)
    with pytest.raises(WebhookRejected, match="from now") as caught:
        verify(decode_secret(SECRET), sent, BODY, now=NOW.timestamp())
    assert caught.value.status == 401
    # ... and within the tolerance it passes (the test can fail both ways).
    verify(decode_secret(SECRET), sent, BODY, now=(at + timedelta(minutes=4, seconds=59)).timestamp())


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_400(missing: str) -> None:
    sent = headers(SECRET, "msg_8", NOW)
    del sent[missing]
    with pytest.raises(WebhookRejected) as caught:
        verify(decode_secret(SECRET), sent, BODY, now=NOW.timestamp())
    assert caught.value.status == 400


def test_a_malformed_timestamp_is_400() -> None:
    sent = headers(SECRET, "msg_9", NOW)
    sent["webhook-timestamp"] = "yesterday"
    with pytest.raises(WebhookRejected) as caught:
        verify(decode_secret(SECRET), sent, BODY, now=NOW.timestamp())
    assert caught.value.status == 400


@pytest.mark.parametrize("secret", ["whsec_", "whsec_c2VjcmV0 c2VjcmV0!", "", "whsec_c2VjcmV0*"])
def test_a_secret_that_is_not_base64_is_refused_without_quoting_it(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_secret(secret)
    inner = secret.removeprefix("whsec_")
    assert not inner or inner not in str(caught.value)


def test_seen_deliveries_forget_ids_past_twice_the_window() -> None:
    seen = SeenDeliveries(window_s=300)
    seen.add("a", 1000.0)
    seen.add("b", 1500.0)
    assert "a" in seen and "b" in seen
    seen.add("c", 1601.0)  # "a" is more than 600 s old now
    assert "a" not in seen and "b" in seen and "c" in seen


def test_seen_deliveries_are_bounded_in_number() -> None:
    seen = SeenDeliveries(window_s=300, max_entries=3)
    for i in range(10):
        seen.add(f"id{i}", 1000.0 + i)
    assert len(seen) == 3
    assert [f"id{i}" in seen for i in range(10)] == [False] * 7 + [True] * 3
