import numpy as np
import pytest

from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, check_label_names, label_index, parse_findings


def test_chexnet_order_and_count():
    assert len(LABELS) == 14
    assert LABELS[0] == "Atelectasis" and LABELS[-1] == "Hernia"
    assert LABELS.index("Pleural_Thickening") == 12


def test_label_index_by_name_case_and_index():
    assert label_index("atelectasis") == 0
    assert label_index("Hernia") == 13
    assert label_index(3) == 3


def test_unknown_class_lists_valid_names():
    with pytest.raises(UserError, match="Cardiomegaly"):
        label_index("Covid")


def test_parse_findings_no_finding_is_zeros():
    y = parse_findings(["No Finding", "Effusion|Mass", "Hernia"])
    assert y.shape == (3, 14)
    assert y[0].sum() == 0
    assert y[1, LABELS.index("Effusion")] == 1 and y[1, LABELS.index("Mass")] == 1 and y[1].sum() == 2
    assert y[2, 13] == 1


def test_parse_findings_rejects_unknown():
    with pytest.raises(UserError, match="Fracture"):
        parse_findings(["Fracture"])


def test_misaligned_label_set_is_an_error():
    check_label_names(list(LABELS))
    with pytest.raises(UserError):
        check_label_names(list(reversed(LABELS)))
    assert np.all(parse_findings(["|".join(LABELS)]) == 1)
