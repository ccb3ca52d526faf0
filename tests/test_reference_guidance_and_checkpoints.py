"""Reference-mesh guidance on OBJ/PLY/GLB, and crash-safe checkpoint writing."""
import math

import pytest
import torch
import trimesh

from lift3d.guidance.reference_mesh import ReferenceMeshGuidance
from lift3d.utils.checkpointing import AtomicCheckpointIO
from tests.test_renderers import camera_rays


def test_same_mask_from_obj_ply_glb(tmp_path, repo_root):
    src = repo_root / "load/shapes/capsule_bicolor.ply"
    mesh = trimesh.load(src, process=False)
    paths = {"ply": src}
    for ext in ("obj", "glb"):
        paths[ext] = tmp_path / f"capsule.{ext}"
        mesh.export(paths[ext])
    b = camera_rays(H=40, W=40, distance=2.0, elevation=20.0, azimuth=30.0)
    masks = {}
    for ext, path in paths.items():
        g = ReferenceMeshGuidance({"mesh_path": str(path)})
        color, mask = g.render_reference(b["mvp_mtx"], 40, 40)
        masks[ext] = mask
        assert color.shape == (1, 40, 40, 3)
    assert torch.allclose(masks["ply"], masks["obj"], atol=1e-5) and torch.allclose(masks["ply"], masks["glb"], atol=1e-5)
    # the capsule (0.5 wide, 1.1 tall) covers a plausible area of the image
    area = masks["ply"].sum().item() / 1600
    assert 0.1 < area < 0.4


def test_losses_are_zero_at_the_truth_and_positive_elsewhere(repo_root):
    g = ReferenceMeshGuidance({"mesh_path": str(repo_root / "load/shapes/blocks_union.ply")})
    b = camera_rays(H=32, W=32)
    color, mask = g.render_reference(b["mvp_mtx"], 32, 32)
    bg = torch.ones(1, 32, 32, 3)
    truth = {"comp_rgb_bg": bg, "opacity": mask}
    losses = g(color + bg * (1 - mask), batch=b, render_out=truth)
    assert losses["loss_mesh_rgb"].item() < 1e-10 and losses["loss_mesh_mask"].item() < 1e-10
    wrong = g(torch.zeros(1, 32, 32, 3), batch=b, render_out={"comp_rgb_bg": bg, "opacity": torch.zeros_like(mask)})
    assert wrong["loss_mesh_mask"].item() == pytest.approx((mask**2).mean().item())


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 5, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"global_step": 6, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind
