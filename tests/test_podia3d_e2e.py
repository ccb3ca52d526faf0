"""The PODIA-3D chain through launch.py on the toy world (#17 point 3): source GAN -> pose-preserved data
(fine-tune + generation, EG3D format) -> adaptation from the source checkpoint; a few steps each."""
import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread_per_module")]

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "custom" / "podia3d" / "configs"


def _trial(root: Path, name: str) -> Path:
    trials = sorted((root / name).glob("*@*"))
    assert len(trials) == 1, trials
    return trials[0]


def test_source_data_adapt_chain(tmp_path):
    import launch

    out = tmp_path / "out"
    common = [f"exp_root_dir={out}", "trainer.enable_progress_bar=false"]
    assert launch.main(["--config", str(CONFIGS / "podia3d-source.yaml"), "--train", *common,
                        f"data.dataroot={tmp_path / 'toy-cube'}", "data.n_images=8", "data.batch_size=4",
                        "data.n_test_frames=2", "trainer.max_steps=2", "system.sample_every_n_steps=0"]) == 0
    source_ckpt = _trial(out, "podia3d-source") / "ckpts" / "last.ckpt"
    assert source_ckpt.is_file()

    assert launch.main(["--config", str(CONFIGS / "podia3d-data.yaml"), "--train", *common,
                        f"data.generator_path={source_ckpt}", "data.n_images=6", "data.batch_size=3",
                        "data.eval_batch_size=4", "trainer.max_steps=2", "system.num_steps=2",
                        "system.pose_filter=false", "system.debias_prompts=[a blue cylinder,a green cylinder]"]) == 0
    data_trial = _trial(out, "podia3d-data")
    dataset = data_trial / "save" / "dataset"
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    scores = json.loads((data_trial / "save" / "dataset_scores.json").read_text())
    assert len(labels) == 6 and scores["generated"] == 6 and scores["kept"] == 6
    assert [s["prompt"] for s in scores["images"]] == ["a blue cylinder", "a green cylinder"] * 3
    # every generated image keeps its source render's camera (the data module's labels, in order)
    from custom.podia3d.data import SourceRenderDataModule

    source_labels = SourceRenderDataModule({"generator_path": str(source_ckpt), "n_images": 6, "batch_size": 3}).labels
    assert torch.allclose(torch.tensor([l[1] for l in labels]), source_labels, atol=1e-6)
    ckpt = torch.load(data_trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("finetuned.") for k in ckpt["state_dict"])  # the PPD is checkpointed

    assert launch.main(["--config", str(CONFIGS / "podia3d-adapt.yaml"), "--train", *common,
                        f"data.dataroot={dataset}", f"system.init_from={source_ckpt}", "data.batch_size=3",
                        "data.n_test_frames=2", "trainer.max_steps=2", "system.sample_every_n_steps=0"]) == 0
    assert (_trial(out, "podia3d-adapt") / "ckpts" / "last.ckpt").is_file()
