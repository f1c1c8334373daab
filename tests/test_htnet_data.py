"""HTNet data: checkout import, BGR reading, mosaics equal to an independent assembly from the same table."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from pthnet_jax.commands.import_htnet import main as import_main
from pthnet_jax.families.htnet.dataset import load, write_synthetic
from pthnet_jax.families.htnet.flow import (CSV_NAME, FLOW_DIR, HTNetDataError, read_bgr, read_landmarks,
                                            read_samples)

# The original's coordinates for a sample without a detected face (reference §3.2), written out again here.
NO_FACE = [(9.528073, 11.062551), (21.396168, 10.919773), (15.380184, 17.380562), (10.255435, 22.121233),
           (20.583706, 22.25584)]


def _expected_mosaic(png_path, points) -> np.ndarray:
    """Reference §3.2, pixel by pixel: x picks rows, y columns; quadrants from landmarks 0, 1, 3, 4."""
    rgb = np.array(Image.open(png_path).convert("RGB"))
    bgr = rgb[:, :, [2, 1, 0]]
    out = np.zeros((28, 28, 3), np.uint8)
    for quadrant, k in enumerate((0, 1, 3, 4)):
        a = int(min(max(points[k][0], 7.0), 21.0))
        b = int(min(max(points[k][1], 7.0), 21.0))
        top, left = 14 * (quadrant // 2), 14 * (quadrant % 2)
        for i in range(14):
            for j in range(14):
                out[top + i, left + j] = bgr[a - 7 + i, b - 7 + j]
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("htnet-data")
    checkout = write_synthetic(root / "checkout", subjects=4, per_subject=3)
    rng = np.random.default_rng(0)
    table = {}
    with open(root / "landmarks.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample"] + [f"{axis}{k}" for k in range(5) for axis in "xy"] + ["fallback"])
        for index, sample in enumerate(read_samples(checkout / CSV_NAME)):
            if index % 4 == 3:
                continue  # not in the table: the fallback set
            points = rng.uniform(0, 28, (5, 2)) if index % 4 else rng.uniform(7, 21, (5, 2)).round()
            fallback = index % 4 == 2
            writer.writerow([sample.name] + ([""] * 10 if fallback else [repr(float(v)) for v in points.reshape(-1)])
                            + [int(fallback)])
            table[sample.name] = NO_FACE if fallback else points.tolist()
    assert import_main(["--repo", str(checkout), "--landmarks", str(root / "landmarks.csv"),
                        "--out", str(root / "data")]) == 0
    return checkout, table, load(root / "data"), root


def test_mosaics_equal_an_independent_assembly(imported):
    checkout, table, data, _ = imported
    assert len(data["sample"]) == 12 and len(set(data["subject"])) == 4
    for index, name in enumerate(data["sample"]):
        points = table.get(name, NO_FACE)
        want = _expected_mosaic(checkout / FLOW_DIR / f"{name} .png", points)
        assert np.array_equal(data["mosaic"][index], want), name
        assert data["fallback"][index] == (points is NO_FACE)
    assert int(data["fallback"].sum()) == 6


def test_records_follow_the_csv(imported):
    checkout, _, data, _ = imported
    samples = read_samples(checkout / CSV_NAME)
    assert data["sample"].tolist() == [s.name for s in samples]
    assert data["label"].tolist() == [s.label for s in samples]
    assert data["database"].tolist() == [s.database for s in samples]
    # The synthetic class is visible: channel `label` (as read, BGR) is the brightest.
    means = data["flow"].reshape(len(samples), -1, 3).mean(1)
    assert np.array_equal(means.argmax(1), data["label"])


def test_png_is_read_in_opencv_order(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30  # R, G, B in the file
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert read_bgr(tmp_path / "a.png")[0, 0].tolist() == [30, 20, 10]
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(HTNetDataError, match="bad.png"):
        read_bgr(tmp_path / "bad.png")


def test_npz_table_reads_like_the_csv(imported, tmp_path):
    _, _, _, root = imported
    csv_table = read_landmarks(root / "landmarks.csv")
    names = list(csv_table.points)
    np.savez(tmp_path / "t.npz", samples=np.array(names), points=np.stack([csv_table.points[n] for n in names]),
             fallback=np.array([csv_table.fallback[n] for n in names]))
    npz_table = read_landmarks(tmp_path / "t.npz")
    assert all(np.array_equal(npz_table.lookup(n)[0], csv_table.lookup(n)[0]) for n in names)
    np.savez(tmp_path / "bad.npz", samples=np.array(names), points=np.zeros((1, 5, 2)), fallback=np.zeros(1))
    with pytest.raises(HTNetDataError, match="bad.npz"):
        read_landmarks(tmp_path / "bad.npz")


def test_bad_inputs_name_the_file_and_line(tmp_path, capsys):
    checkout = write_synthetic(tmp_path / "c", subjects=1, per_subject=2)
    lines = (checkout / CSV_NAME).read_text().splitlines()
    (checkout / CSV_NAME).write_text("\n".join(lines[:2] + [lines[2].replace(",1,", ",7,")]) + "\n")
    assert import_main(["--repo", str(checkout), "--out", str(tmp_path / "d")]) == 2
    assert f"{CSV_NAME}:3: database must be one of" in capsys.readouterr().err
    (checkout / CSV_NAME).write_text("\n".join(lines) + "\n")
    (checkout / FLOW_DIR / "s00_clip_01 .png").unlink()
    assert import_main(["--repo", str(checkout), "--out", str(tmp_path / "d")]) == 2
    assert "s00_clip_01 .png does not exist" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("sample,x0\n")
    with pytest.raises(HTNetDataError, match="t.csv:1: expected the header"):
        read_landmarks(tmp_path / "t.csv")
    assert not (tmp_path / "d").exists()
