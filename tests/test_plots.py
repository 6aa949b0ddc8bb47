"""Each picture is written as a real, non-trivial PNG."""
from gluon_tricks.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_table_pictures_are_written(tmp_path, capsys):
    assert main(["plot", "followup/table4", "--out", str(tmp_path / "p"), "--runs", str(tmp_path / "runs")]) == 0
    for name in ("schedules.png", "curves.png", "ours_vs_paper.png", "mixing_examples.png"):
        data = (tmp_path / "p" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    assert "### Follow-up Table IV" in (tmp_path / "p" / "table.md").read_text()


def test_schedule_command(tmp_path):
    out = tmp_path / "lr.png"
    assert main(["schedule", "followup/table3/cosine", "followup/faithful", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
