"""brain_regions.py: regions from pycortex overlays, fsaverage annotations and aparc, flat maps,
and brain_evaluate.py --regions / --flatmap_layers on pycortex's sample subject S1."""

import csv
import json
import logging
import re
import shutil
import sys

import matplotlib.image
import numpy as np
import pytest
import scipy.spatial

import brain_evaluate
import brain_regions
import report
import speech_models
import summaries
from data_utils import Dataset
from run_utils import DatasetError, UsageError

ATLAS_POINTS = 3000  # vertices of the synthetic "fsaverage" sphere
PARCELS = ["???", "A1", "44", "PGi", "STSda", "V1"]  # planted labels ("???": unlabelled)


# ----------------------------------------------------------------------------- pure parts

def _sphere(n, radius=100.0):
    """n points spread evenly over a sphere (a Fibonacci lattice) and its triangles."""
    index = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * index / n)
    azimuth = np.pi * (1 + 5 ** 0.5) * index
    points = radius * np.column_stack([np.cos(azimuth) * np.sin(polar),
                                       np.sin(azimuth) * np.sin(polar), np.cos(polar)])
    return points, scipy.spatial.ConvexHull(points).simplices.astype(np.int32)


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_transfer_labels_takes_the_nearest_atlas_vertex():
    atlas, _ = _sphere(500)
    labels = np.random.default_rng(0).integers(0, 7, len(atlas))
    order = np.random.default_rng(1).permutation(len(atlas))
    # a subject whose registered sphere puts each vertex near one atlas vertex: exact labels
    moved = atlas[order] + np.random.default_rng(2).normal(0, 1e-3, (len(atlas), 3))
    np.testing.assert_array_equal(brain_regions.transfer_labels(atlas, labels, moved),
                                  labels[order])
    # anywhere else: the label of the nearest atlas vertex, by brute force
    targets = np.random.default_rng(3).standard_normal((300, 3)) * 100
    nearest = np.argmin(((targets[:, None] - atlas[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(brain_regions.transfer_labels(atlas, labels, targets),
                                  labels[nearest])


@pytest.mark.parametrize("name, hemi, expected", [
    ("L_A1_ROI", "lh", "A1"), ("R_A1_ROI", "rh", "A1"), ("R_STSda_ROI", "rh", "STSda"),
    ("superiortemporal", "lh", "superiortemporal"), ("???", "lh", None),
    ("unknown", "rh", None), ("Medial_wall", "lh", None)])
def test_parcel_names_drop_the_hemisphere(name, hemi, expected):
    assert brain_regions.parcel_name(name, hemi) == expected


def test_regions_from_vertices_by_brute_force():
    rng = np.random.default_rng(4)
    n_vertices, n_left, n_voxels = 200, 120, 500
    sets = {name: rng.random(n_vertices) < 0.2 for name in ("a", "b", "c")}
    sets["empty"] = np.zeros(n_vertices, bool)
    voxel_vertex = rng.integers(0, n_vertices, n_voxels)
    regions = brain_regions.regions_from_vertices(sets, voxel_vertex, n_left)
    in_two = [sum(sets[name][voxel_vertex[v]] for name in sets) > 1 for v in range(n_voxels)]
    assert any(in_two)
    for name in ("a", "b", "c"):
        whole = [v for v in range(n_voxels) if sets[name][voxel_vertex[v]] and not in_two[v]]
        assert regions[name] == whole
        assert regions[f"{name}_lh"] == [v for v in whole if voxel_vertex[v] < n_left]
        assert regions[f"{name}_rh"] == [v for v in whole if voxel_vertex[v] >= n_left]
    assert set(regions) == {f"{n}{h}" for n in "abc" for h in ("", "_lh", "_rh")}
    with pytest.raises(ValueError, match="two regions"):
        brain_regions.regions_from_vertices(sets, voxel_vertex, n_left, overlap="error")


def test_named_groups_keep_the_parcels_there_are():
    regions = {name: [0] for name in ("A1", "A1_lh", "A1_rh", "PGi", "PGi_rh", "44", "44_lh")}
    groups = brain_regions.named_groups(regions)
    assert groups["primary_auditory"] == ["A1"]
    assert groups["primary_auditory_lh"] == ["A1_lh"]
    assert groups["late_language"] == ["44", "PGi"]
    assert groups["late_language_lh"] == ["44_lh"]
    assert groups["late_language_rh"] == ["PGi_rh"]
    assert groups["early_auditory"] == ["A1"]
    assert "early_visual" not in groups


def test_annot_flags_are_checked(capsys):
    with pytest.raises(SystemExit):
        brain_regions.parse_args(["regions", "--data_dir", "d", "--subject", "1",
                                  "--source", "annot"])
    assert "--fsaverage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        brain_regions.parse_args(["regions", "--data_dir", "d", "--subject", "1",
                                  "--source", "overlays", "--fsaverage", "fs"])
    assert "annot source" in capsys.readouterr().err
    args = brain_regions.parse_args(["regions", "--data_dir", "d", "--subject", "1",
                                     "--source", "annot", "--fsaverage", "fs"])
    assert args.annot == ["fs/label/lh.HCPMMP1.annot", "fs/label/rh.HCPMMP1.annot"]


def test_missing_anatomy_names_the_datalad_get(synthetic_dir, tmp_path, caplog):
    for source, folder in (("overlays", "derivative/pycortex-db/UTS01"),
                           ("aparc", "derivative/freesurfer_subjdir/UTS01")):
        if source == "aparc":  # the pycortex part is there, FreeSurfer's is not
            data = tmp_path / "ds"
            shutil.copytree(synthetic_dir, data)
            (data / "derivative/pycortex-db/UTS01/transforms/UTS01_auto").mkdir(parents=True)
        else:
            data = synthetic_dir
        caplog.clear()
        assert brain_regions.main(["regions", "--data_dir", str(data), "--subject", "1",
                                   "--source", source, "--cache_dir", str(tmp_path)]) == 1
        assert f"datalad get -d {data} {folder}" in caplog.text
    # the folders are there but datalad has not fetched the files
    caplog.clear()
    assert brain_regions.main(["regions", "--data_dir", str(data), "--subject", "1",
                               "--source", "overlays", "--cache_dir", str(tmp_path)]) == 1
    assert ("surfaces/flat_lh.gii: not found (10 of the pycortex files are missing); fetch them "
            f"with `datalad get -d {data} derivative/pycortex-db/UTS01`") in caplog.text


def test_without_pycortex_the_message_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cortex", None)  # import cortex raises ImportError
    anatomy = brain_regions.Anatomy("UTS01", tmp_path, "UTS01_auto", tmp_path)
    with pytest.raises(UsageError, match="pip install pycortex nibabel"):
        brain_regions.import_cortex(anatomy, tmp_path)


# ----------------------------------------------------------------------------- on S1

@pytest.fixture(scope="module")
def s1(s1_dataset):
    """(dataset, cache, pycortex, anatomy, thick mask, nearest vertex per voxel, vertex counts)."""
    data, cache = s1_dataset
    anatomy = brain_regions.subject_anatomy(Dataset(data), 1)
    cortex = brain_regions.import_cortex(anatomy, cache)
    mask = brain_regions.thick_mask(cortex, anatomy)
    voxel_vertex = cortex.utils.get_vox_dist(anatomy.subject, anatomy.transform)[1][mask]
    return data, cache, cortex, anatomy, mask, voxel_vertex, brain_regions.vertex_counts(
        cortex, anatomy)


def test_overlay_regions_equal_pycortex_roi_masks(s1, caplog):
    data, cache, cortex, anatomy, mask, _, _ = s1
    with caplog.at_level(logging.INFO):
        path = brain_regions.subject_regions(Dataset(data), 1, "overlays", cache)
    regions = json.loads(path.read_text())
    with pytest.warns(UserWarning):  # S1's empty ROIs (V3A, LO, ...)
        masks = cortex.utils.get_roi_masks(anatomy.subject, anatomy.transform,
                                           gm_sampler="thick", split_lr=True)
    names = {name[:-2] for name in masks}
    assert {"AC", "Broca", "sPMv"} <= set(regions)
    for name in names:
        columns = {hemi: np.flatnonzero(masks[f"{name}_{side}"][mask]).tolist()
                   for hemi, side in (("lh", "L"), ("rh", "R"))}
        whole = sorted(columns["lh"] + columns["rh"])
        if not whole:
            assert name not in regions
            continue
        assert regions[name] == whole
        for hemi in ("lh", "rh"):
            assert regions.get(f"{name}_{hemi}", []) == columns[hemi]
    assert set(regions) <= {f"{n}{h}" for n in names for h in ("", "_lh", "_rh")}
    # the second time it is the cached file
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert brain_regions.subject_regions(Dataset(data), 1, "overlays", cache) == path
    assert "(cached)" in caplog.text


def _write_freesurfer_pair(root, counts, nibabel):
    """A synthetic fsaverage (a sphere with an annotation of PARCELS) and the subject's
    FreeSurfer folder: ``sphere.reg`` puts each subject vertex on one atlas vertex (with a
    jitter far below the vertex spacing); ``sphere`` is that sphere rotated, as a subject's
    native sphere is. Returns (fsaverage folder, annotation paths, per-hemisphere planted
    subject labels as names)."""
    atlas, faces = _sphere(ATLAS_POINTS)
    fsaverage = root / "fsaverage"
    subject = root / "subject"
    for folder in (fsaverage / "surf", fsaverage / "label", subject / "surf", subject / "label"):
        folder.mkdir(parents=True)
    annots, planted = [], []
    azimuth = np.arctan2(atlas[:, 1], atlas[:, 0])
    atlas_labels = np.digitize(azimuth, np.linspace(-np.pi, np.pi, len(PARCELS) + 1)[1:-1])
    for index, (hemi, count) in enumerate(zip(("lh", "rh"), counts)):
        prefix = "L_" if hemi == "lh" else "R_"
        names = [name if name == "???" else f"{prefix}{name}_ROI" for name in PARCELS]
        ctab = np.column_stack([np.arange(len(PARCELS)) * 40 % 256, np.full(len(PARCELS), 50),
                                np.full(len(PARCELS), 90), np.zeros(len(PARCELS)),
                                np.arange(len(PARCELS))]).astype(np.int32)
        nibabel.freesurfer.write_geometry(str(fsaverage / "surf" / f"{hemi}.sphere.reg"),
                                          atlas, faces)
        annots.append(fsaverage / "label" / f"{hemi}.HCPMMP1.annot")
        nibabel.freesurfer.write_annot(str(annots[-1]), atlas_labels, ctab, names,
                                       fill_ctab=True)
        chosen = np.random.default_rng(index).integers(0, ATLAS_POINTS, count)
        registered = atlas[chosen] + np.random.default_rng(9).normal(0, 1e-3, (count, 3))
        sub_faces = np.zeros((1, 3), np.int32)
        nibabel.freesurfer.write_geometry(str(subject / "surf" / f"{hemi}.sphere.reg"),
                                          registered, sub_faces)
        nibabel.freesurfer.write_geometry(str(subject / "surf" / f"{hemi}.sphere"),
                                          registered @ _rotation(index).T, sub_faces)
        planted.append([PARCELS[label] for label in atlas_labels[chosen]])
    return fsaverage, annots, planted


def _expected_regions(planted, voxel_vertex, n_left):
    """Region -> voxel columns from planted vertex names, written out from the rule (a voxel
    takes its nearest vertex's parcel)."""
    names = np.array(planted[0] + planted[1])[voxel_vertex]
    left = voxel_vertex < n_left
    expected = {}
    for parcel in set(names) - {"???"}:
        expected[parcel] = np.flatnonzero(names == parcel).tolist()
        for hemi, side in (("lh", left), ("rh", ~left)):
            expected[f"{parcel}_{hemi}"] = np.flatnonzero((names == parcel) & side).tolist()
    return expected


def test_annotation_parcels_reach_the_subject_exactly(s1, tmp_path):
    import nibabel

    data, cache, _, anatomy, _, voxel_vertex, counts = s1
    work = tmp_path / "ds"
    shutil.copytree(data, work, symlinks=True,
                    ignore=shutil.ignore_patterns("*.hf5", "*.wav", "*.TextGrid"))
    fsaverage, annots, planted = _write_freesurfer_pair(tmp_path, counts, nibabel)
    freesurfer = work / "derivative" / "freesurfer_subjdir"
    freesurfer.mkdir()
    shutil.copytree(tmp_path / "subject", freesurfer / "UTS01")
    # (no response files in this copy: nothing to check the mask's voxel count against)
    path = brain_regions.subject_regions(Dataset(work), 1, "annot", cache, [str(a) for a in annots],
                                         str(fsaverage))
    regions = json.loads(path.read_text())
    expected = _expected_regions(planted, voxel_vertex, counts[0])
    groups = {name: members for name, members in regions.items()
              if all(isinstance(m, str) for m in members)}
    assert {name: v for name, v in regions.items() if name not in groups} == expected
    assert groups == {
        "primary_auditory": ["A1"], "primary_auditory_lh": ["A1_lh"],
        "primary_auditory_rh": ["A1_rh"],
        "late_language": ["44", "PGi", "STSda"],
        "late_language_lh": ["44_lh", "PGi_lh", "STSda_lh"],
        "late_language_rh": ["44_rh", "PGi_rh", "STSda_rh"],
        "early_auditory": ["A1"], "early_auditory_lh": ["A1_lh"], "early_auditory_rh": ["A1_rh"],
        "angular_gyrus": ["PGi"], "angular_gyrus_lh": ["PGi_lh"], "angular_gyrus_rh": ["PGi_rh"],
        "lateral_temporal": ["STSda"], "lateral_temporal_lh": ["STSda_lh"],
        "lateral_temporal_rh": ["STSda_rh"], "ifg_mfg": ["44"], "ifg_mfg_lh": ["44_lh"],
        "ifg_mfg_rh": ["44_rh"], "early_visual": ["V1"], "early_visual_lh": ["V1_lh"],
        "early_visual_rh": ["V1_rh"]}

    # the subject's own aparc: its vertex labels as they are, no groups
    for hemi, names in zip(("lh", "rh"), planted):
        aparc = ["unknown", "superiortemporal", "transversetemporal"]
        labels = np.array([min(PARCELS.index(name), 2) for name in names])
        ctab = np.array([[25, 5, 25, 0, 0], [140, 220, 220, 0, 1], [150, 150, 200, 0, 2]],
                        np.int32)
        nibabel.freesurfer.write_annot(str(freesurfer / "UTS01" / "label" / f"{hemi}.aparc.annot"),
                                       labels, ctab, aparc, fill_ctab=True)
    aparc = json.loads(brain_regions.subject_regions(Dataset(work), 1, "aparc", cache).read_text())
    as_aparc = [[{"???": "unknown", "A1": "superiortemporal"}.get(n, "transversetemporal")
                 for n in names] for names in planted]
    assert aparc == {name: v for name, v in _expected_regions(
        as_aparc, voxel_vertex, counts[0]).items() if not name.startswith("unknown")}

    # an annotation of another fsaverage, a subject of another vertex count: refused
    small, faces = _sphere(100)
    nibabel.freesurfer.write_geometry(str(fsaverage / "surf" / "lh.sphere.reg"), small, faces)
    wrong_atlas = f"{re.escape(str(annots[0]))}: {ATLAS_POINTS} vertices but .* has 100"
    with pytest.raises(DatasetError, match=wrong_atlas):
        brain_regions.subject_regions(Dataset(work), 1, "annot", cache, [str(a) for a in annots],
                                      str(fsaverage))
    atlas, faces = _sphere(ATLAS_POINTS)
    nibabel.freesurfer.write_geometry(str(fsaverage / "surf" / "lh.sphere.reg"), atlas, faces)
    nibabel.freesurfer.write_geometry(str(freesurfer / "UTS01" / "surf" / "lh.sphere.reg"),
                                      atlas, faces)
    with pytest.raises(DatasetError, match=f"lh.sphere.reg: {ATLAS_POINTS} vertices but the "
                                           f"subject's pycortex lh surfaces have {counts[0]}"):
        brain_regions.subject_regions(Dataset(work), 1, "annot", cache, [str(a) for a in annots],
                                      str(fsaverage))


def test_a_mask_of_another_voxel_count_is_refused(s1):
    _, _, cortex, anatomy, mask, _, _ = s1
    with pytest.raises(DatasetError, match=f"mask_thick has {int(mask.sum())} voxels but the "
                                           "responses of UTS01 have 123 columns"):
        brain_regions.thick_mask(cortex, anatomy, 123)


def _colours(path):
    image = matplotlib.image.imread(path)
    red = (image[..., 0] > 0.6) & (image[..., 2] < 0.35) & (image[..., 3] > 0.5)
    blue = (image[..., 2] > 0.6) & (image[..., 0] < 0.35) & (image[..., 3] > 0.5)
    return image, int(red.sum()), int(blue.sum())


def _rise_and_fall(s1):
    """S1's dataset, its overlay regions, and cc_norm of 0.2 everywhere (before) and with a
    rise of 0.3 in auditory cortex and a fall of 0.3 in Broca's area (after)."""
    data, cache, _, _, mask, _, _ = s1
    dataset = Dataset(data)
    regions = json.loads(brain_regions.subject_regions(dataset, 1, "overlays", cache).read_text())
    before = np.full(int(mask.sum()), 0.2, np.float32)
    after = before.copy()
    after[regions["AC"]] += 0.3
    after[regions["Broca"]] -= 0.3
    return dataset, regions, before, after


def test_flat_maps_show_where_alignment_rose_and_fell(s1, tmp_path):
    cache = s1[1]
    dataset, regions, before, after = _rise_and_fall(s1)
    n = len(before)
    written = brain_regions.write_flatmaps(tmp_path, {("pretrained", 3): before,
                                                      ("final", 3): after}, np.arange(n),
                                           dataset, 1, cache, height=256)
    assert sorted(p.name for p in written) == [
        "flatmap_final-minus-pretrained_layer3.png", "flatmap_final_layer3.png",
        "flatmap_pretrained_layer3.png"]
    image, red, blue = _colours(tmp_path / "flatmap_final-minus-pretrained_layer3.png")
    assert image.shape[0] == 256 and image.shape[1] > 256
    # a diverging map centred on 0: AC red, Broca blue, in proportion to their sizes
    assert red > 50 and blue > 10
    # the other sign gives the other colours
    flipped = brain_regions.write_flatmaps(tmp_path / "flipped", {
        ("pretrained", 3): after, ("final", 3): before}, np.arange(n), dataset, 1, cache,
        height=256)
    _, red_flipped, blue_flipped = _colours(flipped[-1])
    assert (red_flipped, blue_flipped) == pytest.approx((blue, red), rel=0.1)
    with pytest.raises(FileExistsError):
        brain_regions.write_flatmaps(tmp_path, {("pretrained", 3): before}, np.arange(n),
                                     dataset, 1, cache, height=256)


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(page_file, screenshots, hovered):
    """Open ``page_file`` in headless Chromium (Playwright driving the system's browser),
    screenshot each map of its menu (``screenshots``: map index -> PNG path) and, the pointer
    on the first row of the region list, the last map again (``hovered``); returns the console
    errors and uncaught exceptions."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=BROWSER, args=["--enable-unsafe-swiftshader", "--use-gl=angle",
                                           "--use-angle=swiftshader"])
        page = browser.new_page(viewport={"width": 1000, "height": 600})
        page.on("console", lambda message: message.type == "error" and errors.append(
            message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_file.resolve().as_uri())
        page.wait_for_function("document.body.dataset.ready !== undefined", timeout=60_000)
        assert page.evaluate("document.body.dataset.ready") == "true", page.inner_text("#status")
        for index, path in screenshots.items():
            page.select_option("#map", str(index))
            page.locator("#cortex").screenshot(path=str(path))
        page.hover("tr.region >> nth=0")
        page.locator("#cortex").screenshot(path=str(hovered))
        browser.close()
    return errors


@pytest.mark.skipif(BROWSER is None, reason="no Chromium found (chromium or chromium-browser "
                                           "on PATH; .ci/run installs Debian's)")
def test_the_viewer_shows_where_alignment_rose_and_fell_in_a_real_browser(s1, tmp_path):
    """The viewer opens from the file system in headless Chromium without a console error, draws
    the brain (not blank, each map its own picture) and shows a +0.3 planted in auditory cortex
    in red and a -0.3 in Broca's area in blue on the tuned-minus-pretrained map."""
    cache = s1[1]
    dataset, regions, before, after = _rise_and_fall(s1)
    n = len(before)
    page_file = brain_regions.write_viewer(
        tmp_path / "viewer.html", {("pretrained", 3): before, ("final", 3): after},
        np.arange(n), dataset, 1, cache, {name: regions[name] for name in ("AC", "Broca")})
    text = page_file.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    shots = {index: tmp_path / f"map{index}.png" for index in range(3)}
    assert _browse(page_file, shots, tmp_path / "hovered.png") == []
    images = {index: matplotlib.image.imread(path)[..., :3] for index, path in shots.items()}
    for image in images.values():  # the brain, drawn: a third of the page is not background
        assert (np.abs(image - 1).max(axis=-1) > 0.02).mean() > 0.3
    assert not np.allclose(images[0], images[2])  # each map its own colours
    red, blue = _tinted(images[2])  # final minus pretrained: AC red, Broca blue
    assert red > 2000 and blue > 200
    assert red / blue == pytest.approx(len(regions["AC"]) / len(regions["Broca"]), rel=0.6)
    assert _tinted(images[0]) == (0, 0)  # pretrained: 0.2 everywhere, neither
    # the pointer on the first region's row (AC) outlines it in green, and nothing else
    hovered = matplotlib.image.imread(tmp_path / "hovered.png")[..., :3]
    assert _green(hovered) > 100 and _green(images[2]) == 0
    # the region list's means, as planted
    cells = [json.loads(row) for row in re.findall(r'"means": (\[[^]]*\])', text)]
    assert cells == [pytest.approx([0.2, 0.5, 0.3]), pytest.approx([0.2, -0.1, -0.3])]


def _green(image):
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((g > r + 0.3) & (g > b + 0.3)).sum())


def _tinted(image):
    """Pixels clearly red (red above green and blue by 0.2) and clearly blue."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (int(((r > g + 0.2) & (r > b + 0.2)).sum()),
            int(((b > r + 0.2) & (b > g + 0.05)).sum()))


@pytest.mark.slow
def test_evaluate_with_regions_and_maps_in_one_command(s1, tmp_path):
    data, cache, _, _, mask, _, _ = s1
    for seed in (0, 1):
        speech_models.save_tiny_model(tmp_path / f"model{seed}", "wav2vec2", seed=seed)
    out = tmp_path / "out" / "run"
    assert brain_evaluate.main([
        "--model_name", str(tmp_path / "model0"), "--model_path", str(tmp_path / "model1"),
        "--subject", "1", "--data_dir", str(data), "--save_dir", str(tmp_path / "out"),
        "--exp_name", "run", "--cache_dir", str(cache), "--context_s", "1", "--chunk_s", "0.5",
        "--n_boots", "2", "--layers", "1", "2", "--n_permutations", "20", "--n_bootstrap", "20",
        "--regions", "overlays", "--flatmap_layers", "best", "--flatmap_height", "128",
        "--low_level", "phonemes", "--low_level_method", "partition"]) == 0
    regions = json.loads((out / "regions.json").read_text())
    assert regions == json.loads(brain_regions.subject_regions(Dataset(data), 1, "overlays", cache)
                                 .read_text())
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {row["region"] for row in rows} == {"all", *regions}
    for name in ("regions.png", "alignment.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 100
    maps = sorted(path.name for path in out.glob("flatmap_*.png"))
    assert len(maps) == 6 and all(name.endswith(("_layer1.png", "_layer2.png"))
                                  or name.endswith(("_unique_vs_phonemes.png")) for name in maps)
    # the variance unique to the layer is mapped from the partitioning's per-voxel values
    assert sum(name.endswith("_unique_vs_phonemes.png") for name in maps) == 3
    assert not (out / "reliance.png").exists()  # --low_level_method partition alone
    for path in out.glob("flatmap_*.png"):
        assert matplotlib.image.imread(path).shape[0] == 128
    # the report: the region table at the compared layer, regions.png and the maps
    assert report.main(["--out", str(tmp_path / "report"), "--alignment", str(out)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    section = text[text.index("## Brain regions"):]
    shown = json.loads((out / "results.json").read_text())["regions"]["shown"]
    assert len(shown) == summaries.REGION_FIGURE_MAX
    assert shown == [name for name in regions if not name.endswith(("_lh", "_rh"))][:len(shown)]
    layer = json.loads((tmp_path / "report" / "summary.json").read_text())["layer"]
    for name in shown:
        cell = next(row for row in rows if (row["model"], row["region"], row["layer"],
                                            row["aggregation"]) ==
                    ("pretrained", name, str(layer), "parcel_mean"))
        assert (f"| {name} | {float(cell['cc_norm']):.3f} [{float(cell['cc_norm_ci_low']):.3f}, "
                f"{float(cell['cc_norm_ci_high']):.3f}]" in section)
    assert "![alignment per region](../out/run/regions.png)" in section
    assert section.count("](../out/run/flatmap_") == 6
    # a per-voxel result mapped later
    assert brain_regions.main(["map", str(out), "--layers", "2", "1", "--height", "96",
                               "--out", str(tmp_path / "maps")]) == 0
    assert sorted(path.name for path in (tmp_path / "maps").iterdir()) == sorted(
        f"flatmap_{model}_layer{layer}.png" for layer in (1, 2)
        for model in ("pretrained", "model1", "model1-minus-pretrained"))
    assert brain_regions.main(["map", str(out), "--layers", "7"]) == 1
    # the viewer of the folder, with its regions listed
    assert brain_regions.main(["view", str(out), "--layers", "2", "--out",
                               str(tmp_path / "maps" / "viewer.html")]) == 0
    page = (tmp_path / "maps" / "viewer.html").read_text()
    assert '"name": "cc_norm, model1 minus pretrained, layer 2"' in page
    assert all(f'"name": "{name}"' in page for name in regions)


def test_flatmap_flags_check_the_anatomy_before_any_model(dataset_copy, s1, tmp_path, caplog):
    data = s1[0]
    shutil.copytree(data / "derivative" / "pycortex-db", dataset_copy / "derivative" /
                    "pycortex-db")
    assert brain_evaluate.main([
        "--model_name", str(tmp_path / "no-such-model"), "--subject", "1",
        "--data_dir", str(dataset_copy), "--nc_path", str(tmp_path / "UTS01.npy"),
        "--save_dir", str(tmp_path), "--cache_dir", str(s1[1]), "--flatmap_layers", "1"]) == 1
    assert "mask_thick has 80615 voxels but the responses of UTS01 have 120 columns" in \
        caplog.text
