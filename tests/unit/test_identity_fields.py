"""Templates that would put patient identity into paths are recognised."""

from bidsflux.naming import identity_fields


def test_identity_fields_are_found() -> None:
    assert identity_fields("{ReferringPhysicianName}/{StudyDescriptionPath[1]}") == set()
    assert identity_fields("{PatientID}/{StudyInstanceUID}") == {"PatientID"}
    assert identity_fields("sub-{PatientName.family_name}/{AccessionNumber}") == {"PatientName", "AccessionNumber"}
