"""The NIR/NIA detector every privacy test uses (``conftest.nir_numbers``): it must find real
identifiers, Corsican ones included, and nothing else a server prints."""

from __future__ import annotations

import pytest
from apcv_verify.issuer import matricule

from .conftest import nir_numbers

INSEE_EXAMPLE = "269054958815780"  # INSEE's published example 2 69 05 49 588 157 80
CORSE_DU_SUD = matricule("172032A004057")
HAUTE_CORSE = matricule("180022B123456")
NIA = matricule("7850399123456")  # the first digit is not only 1 or 2 (docs/profile.md §5.3)


@pytest.mark.parametrize(
    "text",
    [
        INSEE_EXAMPLE,
        f'{{"ins": "{INSEE_EXAMPLE}"}}',
        f"matricule={CORSE_DU_SUD} seen",
        f"[{HAUTE_CORSE}]",
        f"nia {NIA}",
        f"urn:oid:1.2.250.1.213.1.4.8/{INSEE_EXAMPLE}",
        f"ends with the number {INSEE_EXAMPLE}.",  # a full stop is not a decimal point
        # Beside hexadecimal identifiers, or next to capitals: still found.
        f'"holder_ref": "225eb4be8062608411294a", "ins": "{INSEE_EXAMPLE}"',
        f"INS{INSEE_EXAMPLE}",
    ],
)
def test_real_identifiers_are_found(text: str) -> None:
    assert nir_numbers(text) != []


@pytest.mark.parametrize(
    "text",
    [
        # The fraction of a float: this one has a valid-looking start but is not an identifier,
        # and the exact line that once failed a CI run.
        'apcv_verification_seconds_sum{method="Verify"} 0.250685691833496',
        f"0.{INSEE_EXAMPLE}",  # even with a valid key, digits after a decimal point
        f"{INSEE_EXAMPLE}.5",  # digits before a decimal point
        f"1{INSEE_EXAMPLE}",  # 16 digits
        f"{INSEE_EXAMPLE}0",
        "269054958815781",  # a wrong key
        "1764384000.123456",  # a timestamp
        "1764384000123456789",  # a timestamp in nanoseconds
        "2026-11-29T03:44:09.269054958815780Z",
        "request_id=a1b2c3 holder_ref=9f86d081884c7d65",
        "apcv_trust_list_age_seconds 1.764384000123456e+09",
        "2A9054958815780",  # 2A outside the département position
        # A holder reference whose digits hold a valid-keyed run (the line that once failed a
        # CI run), and a trace id and a span id made the same way.
        '"holder_ref": "225eb4be806260841129474aadefbd7c"',
        f"trace_id={INSEE_EXAMPLE}abcdef0123456789",
        f"span_id=f{INSEE_EXAMPLE}",
    ],
)
def test_floats_timestamps_ids_and_wrong_keys_are_not(text: str) -> None:
    assert nir_numbers(text) == []


def test_every_valid_key_of_a_number_is_told_apart_from_the_others() -> None:
    number13 = INSEE_EXAMPLE[:13]
    found = [key for key in range(100) if nir_numbers(f"{number13}{key:02d}")]
    assert found == [80]
