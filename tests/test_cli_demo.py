"""`ada-hf demo` wiring: the web app by default (MODEL optional), the terminal demo with --text."""

import pytest

from ada_hf.cli import main


def test_text_demo_prints_a_table(capsys):
    assert main(["demo", "--text", "--variant", "L", "--budgets", "1.0,0.5", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "variant" in out and "0.50" in out


def test_text_demo_refuses_a_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "some/model", "--text"])
    assert exit_info.value.code == 2
    assert "MODEL ('some/model') is for the web app" in capsys.readouterr().err


def test_web_demo_names_a_missing_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", str(missing)])
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err
