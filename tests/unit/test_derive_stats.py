"""The built-in derivatives (image statistics, QC verdicts) and what a derivative spec accepts.

Images are tiny NIfTIs made with nibabel, so every statistic is known exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest

from bidsflux.derive import DerivativeSpec, builtin_spec, derivative_url, qc_spec, stats_spec
from bidsflux.derive import qc, stats
from bidsflux.errors import UsageError


def nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nibabel.Nifti1Image(data, np.diag([*zooms[:3], 1.0]))
    image.header.set_zooms(zooms + (2.0,) * (data.ndim - len(zooms)))
    nibabel.save(image, str(path))
    return path


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    t1 = np.zeros((2, 3, 4), dtype=np.float32)
    t1[0, :, :] = np.arange(12, dtype=np.float32).reshape(3, 4)  # 0..11: one zero, eleven non-zero
    t1[1, 0, 0] = np.nan
    nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", t1, (1.0, 1.0, 2.0))
    bold = np.stack([np.full((2, 2, 2), v, dtype=np.int16) for v in (1, 2, 3, 6)], axis=-1)
    nifti(root / "sub-01" / "func" / "sub-01_task-rest_bold.nii", bold, (3.0, 3.0, 3.0))
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")
    (root / "sourcedata").mkdir()
    nifti(root / "sourcedata" / "ignored.nii.gz", np.ones((2, 2, 2), dtype=np.float32))
    return root


def test_stats_are_exact_and_written_per_image_and_as_one_sorted_table(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert stats.main([str(bids), str(out)]) == 0

    t1 = json.loads((out / "sub-01" / "anat" / "sub-01_T1w_stats.json").read_text())
    values = np.arange(12, dtype=np.float64).tolist() + [0.0] * 11  # 24 voxels, one of them NaN
    assert t1["Source"] == "sub-01/anat/sub-01_T1w.nii.gz"
    assert t1["Shape"] == [2, 3, 4] and t1["Zooms"] == [1.0, 1.0, 2.0]
    assert t1["Mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert t1["Std"] == pytest.approx(np.std(values), abs=1e-12)
    assert (t1["Min"], t1["Max"]) == (0.0, 11.0)
    assert t1["NonzeroFraction"] == pytest.approx(11 / 24)
    assert t1["NaNCount"] == 1

    bold = json.loads((out / "sub-01" / "func" / "sub-01_task-rest_bold_stats.json").read_text())
    assert bold["Shape"] == [2, 2, 2, 4] and bold["Zooms"] == [3.0, 3.0, 3.0, 2.0]
    assert bold["Mean"] == 3.0 and bold["Std"] == pytest.approx(math.sqrt(3.5))
    assert (bold["Min"], bold["Max"], bold["NonzeroFraction"], bold["NaNCount"]) == (1.0, 6.0, 1.0, 0)

    lines = (out / "stats.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(stats.TSV_COLUMNS)
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/func/sub-01_task-rest_bold.nii"]
    assert rows[1] == ["sub-01/func/sub-01_task-rest_bold.nii", "2x2x2x4", "3x3x3x2", "3", "1.870828693", "1", "6",
                       "1", "0"]
    assert rows[0][1:3] == ["2x3x4", "1x1x2"] and rows[0][-1] == "1"
    assert float(rows[0][3]) == pytest.approx(np.mean(values), rel=1e-9)

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "bidsflux.derive.stats"
    assert description["GeneratedBy"][0]["Version"]
    assert not list(out.rglob("ignored*")), "only sub-* folders are read"


def test_stats_output_is_deterministic_and_mean_images_are_byte_identical(bids: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert stats.main([str(bids), str(first), "--mean-images"]) == 0
    assert stats.main([str(bids), str(second), "--mean-images"]) == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    mean = first / "sub-01" / "func" / "sub-01_task-rest_desc-mean_bold.nii.gz"
    image: Any = nibabel.load(str(mean))  # a Nifti1Image; nibabel's stubs only promise FileBasedImage
    assert image.shape == (2, 2, 2)
    assert np.asarray(image.dataobj).tolist() == np.full((2, 2, 2), 3.0).tolist()
    assert not list((first / "sub-01" / "anat").glob("*desc-mean*")), "3D images get no temporal mean"


def test_stats_removes_its_own_outputs_of_images_that_are_gone_and_nothing_else(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert stats.main([str(bids), str(out), "--mean-images"]) == 0
    (out / "README.md").write_text("kept\n")
    for path in (bids / "sub-01" / "func").iterdir():
        path.unlink()
    assert stats.main([str(bids), str(out), "--mean-images"]) == 0
    assert not (out / "sub-01" / "func").exists() or not any((out / "sub-01" / "func").iterdir())
    assert (out / "README.md").read_text() == "kept\n"
    assert len((out / "stats.tsv").read_text().splitlines()) == 2


def test_stats_fails_clearly_on_content_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    image.parent.mkdir(parents=True)
    image.symlink_to("../../.git/annex/objects/missing")  # an annexed file whose content was not got
    assert stats.main([str(tmp_path / "bids"), str(tmp_path / "out")]) == 1
    assert "datalad get" in capsys.readouterr().err
    assert stats.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_stats_of_a_dataset_without_images_is_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / "bids").mkdir()
    assert stats.main([str(tmp_path / "bids"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "stats.tsv").read_text() == "\t".join(stats.TSV_COLUMNS) + "\n"


def test_mean_image_names_follow_bids_entities() -> None:
    assert stats.mean_image_name("sub-01_task-rest_run-01_bold.nii.gz") == \
        "sub-01_task-rest_run-01_desc-mean_bold.nii.gz"
    assert stats.mean_image_name("sub-01_desc-x_dwi.nii") == "sub-01_desc-mean_dwi.nii.gz"
    assert stats.fmt(float("nan")) == "n/a" and stats.fmt(-0.0) == "0" and stats.fmt(1 / 3) == "0.3333333333"


ROW = {"path": "sub-01/anat/sub-01_T1w.nii.gz", "shape": "64x64x32", "zooms": "1x1x1.2", "mean": "10",
       "std": "2.5", "min": "0", "max": "40", "nonzero": "0.8", "nan": "0"}


@pytest.mark.parametrize(("changes", "reasons"), [
    ({}, ()),
    ({"nonzero": "0", "std": "0", "mean": "0", "max": "0"}, ("all-zero image",)),
    ({"std": "0"}, ("constant image",)),
    ({"nan": "3"}, ("3 NaN voxels",)),
    ({"nan": "131072", "nonzero": "0", "mean": "n/a", "std": "n/a"}, ("every voxel is NaN",)),
    ({"path": "sub-01/func/sub-01_task-rest_bold.nii.gz", "shape": "64x64x32x5", "zooms": "3x3x3x2"},
     ("5 volumes, fewer than 10",)),
    ({"path": "sub-01/fmap/sub-01_dir-AP_epi.nii.gz", "shape": "64x64x32x2"}, ()),  # fieldmaps have few volumes
    ({"zooms": "1x1x4"}, ("voxel anisotropy 4.00 above 3",)),
    ({"nan": "1", "zooms": "0.5x0.5x2"}, ("1 NaN voxel", "voxel anisotropy 4.00 above 3")),
])
def test_qc_verdicts(changes: dict[str, str], reasons: tuple[str, ...]) -> None:
    verdict = qc.judge({**ROW, **changes})
    assert verdict.reasons == reasons
    assert verdict.verdict == ("fail" if reasons else "pass")


def test_qc_thresholds_are_settings() -> None:
    bold = {**ROW, "path": "sub-01/func/sub-01_task-rest_bold.nii.gz", "shape": "64x64x32x5"}
    assert qc.judge(bold, qc.Thresholds(min_volumes=5)).verdict == "pass"
    assert qc.judge({**ROW, "zooms": "1x1x4"}, qc.Thresholds(max_anisotropy=4)).verdict == "pass"


def test_qc_writes_verdicts_and_a_report_and_exits_zero_with_failures(tmp_path: Path) -> None:
    source = tmp_path / "stats"
    source.mkdir()
    rows = [ROW, {**ROW, "path": "sub-02/anat/sub-02_T1w.nii.gz", "nan": "2"}]
    lines = ["\t".join(stats.TSV_COLUMNS)] + ["\t".join(r[c] for c in stats.TSV_COLUMNS) for r in rows[::-1]]
    (source / "stats.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "qc"
    assert qc.main([str(source), str(out)]) == 0
    table = [line.split("\t") for line in (out / "qc.tsv").read_text().splitlines()]
    assert table == [["path", "verdict", "reasons"], [ROW["path"], "pass", "n/a"],
                     ["sub-02/anat/sub-02_T1w.nii.gz", "fail", "2 NaN voxels"]]
    report = (out / "report.md").read_text()
    assert "- pass: 1" in report and "- fail: 1" in report
    assert "`sub-02/anat/sub-02_T1w.nii.gz` | 2 NaN voxels" in report
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_qc_exits_non_zero_only_when_it_cannot_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert qc.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "stats.tsv is missing" in capsys.readouterr().err
    (tmp_path / "stats.tsv").write_text("path\tmean\nx.nii\t1\n")
    assert qc.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "lacks the columns" in capsys.readouterr().err
    (tmp_path / "stats.tsv").write_text("\t".join(stats.TSV_COLUMNS) + "\n" + "\t".join(
        ["x.nii", "2x2x2", "1x1x1", "1", "oops", "1", "1", "1", "0"]) + "\n")
    assert qc.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "not a number" in capsys.readouterr().err


def test_qc_runs_on_real_stats(bids: Path, tmp_path: Path) -> None:
    assert stats.main([str(bids), str(tmp_path / "stats")]) == 0
    verdicts = qc.run_qc(tmp_path / "stats", tmp_path / "qc")
    assert [(v.path, v.reasons) for v in verdicts] == [
        ("sub-01/anat/sub-01_T1w.nii.gz", ("1 NaN voxel",)),
        ("sub-01/func/sub-01_task-rest_bold.nii", ("4 volumes, fewer than 10",)),
    ]


def test_derivative_urls_sit_beside_the_bids_dataset() -> None:
    assert derivative_url("http://127.0.0.1:8418/Doe-Jane/Memory/bids.git", "derivatives", "stats") == \
        "http://127.0.0.1:8418/Doe-Jane/Memory/derivatives/stats.git"
    assert derivative_url("https://gitlab.example.org/a/b/bids", "qc", "mriqc") == \
        "https://gitlab.example.org/a/b/qc/mriqc.git"
    with pytest.raises(UsageError):
        derivative_url("https://gitlab.example.org/a/b/study.git", "qc", "mriqc")
    with pytest.raises(UsageError):
        derivative_url("https://gitlab.example.org/a/b/bids.git", "results", "mriqc")


@pytest.mark.parametrize("fields", [
    {"name": "../x"}, {"name": "a/b"}, {"name": ""}, {"name": ".hidden"}, {"name": "x.git"},
    {"kind": "other"}, {"command": ()}, {"command": "python x.py"}, {"needs": ("stats", "stats")},
    {"needs": ("bids",)}, {"name": "stats", "needs": ("stats",)}, {"needs": ("a/b",)},
    {"outputs": ("/abs",)}, {"inputs": ("../outside",)}, {"outputs": ()},
])
def test_derivative_spec_rejects_what_cannot_be_a_dataset(fields: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        DerivativeSpec(**{"name": "mriqc", "command": ("true",), **fields})


def test_builtin_specs() -> None:
    spec = stats_spec(image="registry.example/stats:1")
    assert spec.label == "derivatives/stats" and spec.run_inputs == ("inputs/bids",)
    assert spec.command[:3] == ("python", "-m", "bidsflux.derive.stats") and spec.command[-2:] == ("inputs/bids", ".")
    check = qc_spec()
    assert check.label == "qc/stats" and check.needs == ("stats",) and check.run_inputs == ("inputs/stats/stats.tsv",)
    assert check.input_datasets == ("bids", "stats")
    assert builtin_spec("qc/stats") == check
    needs: Any = ["stats"]  # a list from a config file is taken as a tuple
    qc_of_qc = DerivativeSpec(name="stats", kind="qc", command=("true",), needs=needs)
    assert qc_of_qc.needs == ("stats",)
    with pytest.raises(UsageError):
        builtin_spec("fmriprep")
