"""reevaluate.py writes its notes section where --notes says (it once dropped the flag and wrote ./notes.txt)."""
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reevaluate  # noqa: E402


def _finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "run_1"
    (run / "sae").mkdir(parents=True)
    (run / "sae" / "cfg.json").write_text("{}")
    shutil.copy(ROOT / "comparison" / "relu_3" / "final_info.json", run / "final_info.json")  # a real run's config
    return run


def test_reevaluate_notes_flag_sets_where_the_section_goes(tmp_path):
    run = _finished_run(tmp_path)
    target = tmp_path / "elsewhere" / "notes.txt"
    _, cfg, _, in_place = reevaluate.resolve([str(run), "--evals=scr", f"--notes={target}"])
    assert in_place and Path(cfg.system.notes) == target


def test_reevaluation_into_another_folder_writes_a_notes_section_naming_each_eval_seed(tmp_path):
    run = _finished_run(tmp_path)
    target = tmp_path / "notes.txt"
    _, cfg, _, in_place = reevaluate.resolve([str(run), f"--out_dir={tmp_path / 'again'}", "--evals=core,absorption",
                                              "--set", "absorption.seed=2", f"--notes={target}"])
    assert not in_place and reevaluate.seeds_note(cfg) == "eval seeds core 0, absorption 2"
    reevaluate.write_notes(cfg, "## run_1: evaluated again", {"core": {"status": "error", "error": "no text"}},
                           ["core failed"])
    assert target.read_text() == "## run_1: evaluated again  (FAILED)\n\ncore: FAILED: no text\nNOT A RESULT: core failed\n\n"
