"""Brain regions and cortical maps from a ds003020 subject's own anatomy.

    python brain_regions.py regions --data_dir /path/to/ds003020 --subject 3 --source overlays
    python brain_regions.py regions --data_dir D --subject 3 --source annot --fsaverage fs/fsaverage
    python brain_regions.py regions --data_dir D --subject 3 --source aparc
    python brain_regions.py map outputs/alignment/wav2vec2-base_UTS03 --layers 8

``regions`` writes the region file that ``brain_evaluate.py --regions`` takes: a JSON object
mapping each region name to its voxel indices (columns of the subject's hf5 responses) and
each group name to its regions' names (docs/method.md#regions). Sources:

- ``overlays``: the ROIs drawn in the subject's pycortex ``overlays.svg`` (AC, Broca, sPMv, ...).
- ``annot``: the parcels of an fsaverage annotation (default the HCP-MMP1 ``?h.HCPMMP1.annot``
  in ``<fsaverage>/label``), carried to the subject by nearest vertex on its FreeSurfer
  ``surf/?h.sphere.reg``.
- ``aparc``: the subject's own FreeSurfer parcellation ``label/?h.aparc.annot``.

Vertices become voxels as pycortex's ``get_roi_masks(gm_sampler="thick")`` does it: each voxel
of the transform's ``mask_thick`` (whose order is the responses' column order) takes the
regions of its nearest vertex on the fiducial surface; a voxel whose vertex lies in two
overlay ROIs is left out of both. Every region comes whole (both hemispheres) and per
hemisphere (``<name>_lh``, ``<name>_rh``). For an annotation, the follow-up paper's groups of
HCP-MMP1 parcels (``GROUPS``: late language, primary and early auditory, ...) are added, also
per hemisphere, from the parcels it has.

``map`` draws per-voxel cc_norm of a ``brain_evaluate.py`` results folder on the subject's flat
map (pycortex quickflat): ``flatmap_<model>_layer<k>.png`` per model and
``flatmap_<tuned>-minus-pretrained_layer<k>.png`` (a diverging map centred on 0). ROI outlines
and labels need Inkscape; without it the maps are plain.

pycortex and nibabel are optional dependencies (``pip install pycortex nibabel``; ``make setup``
installs them); only this module imports them. pycortex reads the dataset's
``derivative/pycortex-db`` in place and keeps what it computes (masks excepted, which pycortex
stores beside the transform) in ``<cache_dir>/pycortex``.
"""

import contextlib
import dataclasses
import io
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

import arguments
import data_utils
import hdf5_io
import results_schema
import run_utils
from arguments import flag
from run_utils import DatasetError, UsageError

logger = logging.getLogger(__name__)

SOURCES = ("overlays", "annot", "aparc")
HEMISPHERES = ("lh", "rh")
# The follow-up paper's region groups of HCP-MMP1 parcels (docs/method.md#regions)
GROUPS = {
    "late_language": ["A5", "44", "45", "IFJa", "IFSp", "PGi", "PGp", "PGs", "TPOJ1", "TPOJ2",
                      "TPOJ3", "STGa", "STSda", "STSdp", "TA2", "STSva"],
    "primary_auditory": ["A1"],
    "early_auditory": ["A1", "LBelt", "MBelt", "PBelt", "RI", "A4"],
    "angular_gyrus": ["PGi", "PGp", "PGs", "TPOJ2", "TPOJ3"],
    "lateral_temporal": ["TPOJ1", "STGa", "STSda", "STSdp", "A5", "STSva"],
    "ifg_mfg": ["44", "45", "IFJa", "IFSp"],
    "early_visual": ["V1", "V2"],
}
UNLABELLED = {"???", "unknown", "medial_wall"}  # annotation names that are no region
ANNOT_NAME = "HCPMMP1"  # --annot default: <fsaverage>/label/?h.HCPMMP1.annot
MAP_HEIGHT = 1024  # flat-map height in pixels
INSTALL = "pip install pycortex nibabel (make setup installs them)"
PYCORTEX_SURFACES = ("flat", "pia", "wm", "inflated")  # what regions and maps read
DEFAULT_CACHE = "outputs/brain_alignment/feature_cache"  # brain_evaluate.py's --cache_dir


REGIONS_GROUP = "brain regions and cortical maps (brain_regions.py)"


@dataclasses.dataclass(kw_only=True)
class AnnotFlags(arguments.Flags):
    """The flags of the annot source (``regions --source annot``, ``brain_evaluate.py
    --regions annot``)."""

    fsaverage: str | None = flag(None, group=REGIONS_GROUP,
                                 help="FreeSurfer fsaverage folder (surf/?h.sphere.reg or "
                                      "?h.sphere), for the annot source; docs/method.md#regions "
                                      "says how to get it with HCP-MMP1")
    annot: list[str] | None = flag(None, nargs=2, metavar=("LH", "RH"), group=REGIONS_GROUP,
                                   help="fsaverage annotations of the annot source (default "
                                        f"<fsaverage>/label/lh.{ANNOT_NAME}.annot and rh.)")

    def check_source(self, source):
        """A UsageError where the annot flags do not fit ``source``; fills --annot's default."""
        if source == "annot":
            if self.fsaverage is None and self.annot is None:
                raise UsageError("the annot source needs --fsaverage (the fsaverage folder its "
                                 "annotation is drawn on) or, for data on that surface "
                                 "(Narratives' fsaverage6), --annot LH RH")
            if self.annot is None:
                self.annot = [str(Path(self.fsaverage) / "label" / f"{hemi}.{ANNOT_NAME}.annot")
                              for hemi in HEMISPHERES]
        elif self.annot is not None or self.fsaverage is not None:
            raise UsageError("--annot and --fsaverage belong to the annot source "
                             "(brain_regions.py --source annot, brain_evaluate.py --regions "
                             "annot)")


@dataclasses.dataclass(kw_only=True)
class RegionFlags(AnnotFlags):
    """The evaluator's regions and cortical maps."""

    regions: str | None = flag(None, aliases=("--roi_file",), group=REGIONS_GROUP,
                               help="per-region summaries: a JSON file mapping region name -> "
                                    "list of voxel indices and group name -> region names "
                                    "(brain_regions.py regions writes one), or a source "
                                    "computed from the subject's anatomy and cached in "
                                    f"--cache_dir: {', '.join(SOURCES)} (see brain_regions.py);"
                                    " copied into the results as regions.json. A region with "
                                    "none of the summary voxels (see --nc_thr) gets no voxel "
                                    "mean: null in results.json, blank in results.csv, and a "
                                    "warning")
    flatmap_layers: list[str] = flag([], group=REGIONS_GROUP, resumable=True,
                                     help="cortical maps (pycortex quickflat on the subject's "
                                          "flat map) of per-voxel cc_norm of these layers "
                                          "('best': the layer of the highest mean cc_norm of "
                                          "the last model), per model and tuned minus "
                                          "pretrained: flatmap_<model>_layer<k>.png")
    flatmap_height: int = flag(MAP_HEIGHT, group=REGIONS_GROUP, resumable=True,
                               help="cortical map height in pixels")

    def __post_init__(self):
        super().__post_init__()
        self.check_source(self.regions)
        for layer in self.flatmap_layers:
            if layer != "best" and not layer.isdigit():
                raise UsageError(f"--flatmap_layers takes layer numbers or 'best', got {layer!r}")
        if self.flatmap_height < 64:
            raise UsageError(f"--flatmap_height must be at least 64 pixels, got "
                             f"{self.flatmap_height}")


@dataclasses.dataclass(kw_only=True)
class RegionsCommand(AnnotFlags):
    """Write a region file: region name -> voxel indices (hf5 column order), group name ->
    region names."""

    data_dir: str = flag(help="ds003020 root")
    subject: str = flag(help="subject: 1, '1' or UTS01")
    source: str = flag(choices=SOURCES,
                       help="overlays: the ROIs of the subject's pycortex overlays.svg; annot: "
                            "an fsaverage annotation (HCP-MMP1 by default) carried to the "
                            "subject; aparc: the subject's FreeSurfer aparc")
    out: str | None = flag(None, help="region file to write (default: <cache_dir>/regions/"
                                      "...json, the file brain_evaluate.py reuses)")
    cache_dir: str = flag(DEFAULT_CACHE,
                          help="where pycortex's computations and the region files are kept "
                               "(the default is brain_evaluate.py's, which then finds them)")
    overwrite: bool = flag(False, help="replace --out")
    log_level: str = flag("INFO", help="logging level")

    def __post_init__(self):
        super().__post_init__()
        self.check_source(self.source)


@dataclasses.dataclass(kw_only=True)
class MapCommand(arguments.Flags):
    """Flat maps of a brain_evaluate.py results folder: per model cc_norm, and each tuned model
    minus the pretrained one."""

    results_dir: str = flag(positional=True, help="a brain_evaluate.py results folder")
    layers: list[int] = flag(help="layers to map")
    models: list[str] | None = flag(None, help="model labels to map (default: every model of "
                                               "the folder)")
    height: int = flag(MAP_HEIGHT, help="map height in pixels")
    out: str | None = flag(None, help="folder of the maps (default: results_dir)")
    cache_dir: str | None = flag(None, help="pycortex cache (default: the run's --cache_dir)")
    overwrite: bool = flag(False, help="replace existing maps")
    log_level: str = flag("INFO", help="logging level")

    def __post_init__(self):
        super().__post_init__()
        if self.height < 64:
            raise UsageError(f"--height must be at least 64 pixels, got {self.height}")


@dataclasses.dataclass(kw_only=True)
class ViewCommand(arguments.Flags):
    """An interactive viewer of a brain_evaluate.py results folder: one HTML file, opened from
    the file system, of per model cc_norm and each tuned model minus the pretrained one."""

    results_dir: str = flag(positional=True, help="a brain_evaluate.py results folder")
    layers: list[int] = flag(help="layers to show (a map per model and layer)")
    models: list[str] | None = flag(None, help="model labels to show (default: every model of "
                                               "the folder)")
    out: str | None = flag(None, help="the HTML file (default: <results_dir>/viewer.html)")
    cache_dir: str | None = flag(None, help="pycortex cache (default: the run's --cache_dir)")
    overwrite: bool = flag(False, help="replace --out")
    log_level: str = flag("INFO", help="logging level")


COMMANDS = {"regions": (RegionsCommand, "write the region file that brain_evaluate.py "
                                        "--regions takes"),
            "map": (MapCommand, "draw per-voxel cc_norm of a brain_evaluate.py results folder "
                                "on the flat map"),
            "view": (ViewCommand, "write an interactive viewer (one HTML file, no server) of a "
                                  "brain_evaluate.py results folder")}


def parse_args(argv=None):
    return arguments.parse_command(
        COMMANDS, argv, docs="docs/alignment.md",
        description="Brain regions (voxel indices per region) and cortical flat maps of a "
                    "ds003020 subject, from its pycortex database and FreeSurfer folders.")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def run(settings):
    if isinstance(settings, RegionsCommand):
        path = subject_regions(data_utils.Dataset(settings.data_dir), settings.subject,
                               settings.source, settings.cache_dir, settings.annot,
                               settings.fsaverage)
        if settings.out is not None:
            with run_utils.atomic_output(settings.out, settings.overwrite) as tmp:
                shutil.copyfile(path, tmp)
            path = settings.out
        logger.info("regions written to %s", path)
    elif isinstance(settings, ViewCommand):
        path = view_results(settings.results_dir, settings.layers, settings.models,
                            settings.out, settings.cache_dir, settings.overwrite)
        logger.info("viewer written to %s: open it in a browser", path)
    else:
        written = map_results(settings.results_dir, settings.layers, settings.models,
                              settings.out, settings.cache_dir, settings.height,
                              settings.overwrite)
        logger.info("%d flat maps written to %s", len(written),
                    settings.out or settings.results_dir)


# ----------------------------------------------------------------------------- the dataset

class Anatomy(NamedTuple):
    """Where a ds003020 subject's anatomy is."""
    subject: str  # UTS0N, also its pycortex subject name
    pycortex_db: Path  # derivative/pycortex-db (the pycortex filestore)
    transform: str  # the pycortex transform of the responses (UTS0N_auto)
    freesurfer: Path  # derivative/freesurfer_subjdir/UTS0N


def subject_anatomy(dataset, subject, need=("pycortex",)):
    """The ``Anatomy`` of a subject of ``dataset``, checked: each of ``need`` ("pycortex",
    "freesurfer") must be on disk, else a DatasetError with the ``datalad get`` that fetches
    it."""
    subject = data_utils.subject_id(subject)
    data_dir, derivative = dataset.root, dataset.derivative
    transforms = derivative / "subject_xfms.json"
    transform = f"{subject}_auto"
    if transforms.is_file():
        try:
            transform = json.loads(transforms.read_text(encoding="utf-8-sig")).get(
                subject, transform)
        except ValueError as err:
            raise DatasetError(f"{transforms}: not valid JSON ({err}); download it again "
                               f"(datalad get -d {data_dir} derivative/subject_xfms.json)")
    anatomy = Anatomy(subject, derivative / "pycortex-db", transform,
                      derivative / "freesurfer_subjdir" / subject)
    folders = {"pycortex": (anatomy.pycortex_db / subject / "transforms" / transform,
                            f"derivative/pycortex-db/{subject}"),
               "freesurfer": (anatomy.freesurfer / "surf", f"derivative/freesurfer_subjdir/"
                                                          f"{subject}")}
    for what in need:
        folder, relative = folders[what]
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not found; fetch the subject's {what} anatomy with "
                               f"`datalad get -d {data_dir} {relative}`")
    if "pycortex" in need:  # datalad leaves files it has not fetched as broken links
        subject_db = anatomy.pycortex_db / subject
        needed = [subject_db / "surfaces" / f"{kind}_{hemi}.gii" for kind in PYCORTEX_SURFACES
                  for hemi in HEMISPHERES]
        needed += [subject_db / "transforms" / transform / name
                   for name in ("matrices.xfm", "reference.nii.gz")]
        missing = [path for path in needed if not path.is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: not found ({len(missing)} of the pycortex files "
                               f"are missing); fetch them with `datalad get -d {data_dir} "
                               f"derivative/pycortex-db/{subject}`")
    return anatomy


def import_cortex(anatomy, cache_dir):
    """pycortex, reading ``anatomy.pycortex_db`` and caching in ``<cache_dir>/pycortex/<key>``
    (a key per database folder: two datasets may both have a UTS01). The database's own
    ``cache/`` files (flat-map pixel caches) are linked there so that they are not made again.
    A UsageError naming the install command when pycortex is missing."""
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # "Inkscape not found"
            import cortex
            import cortex.quickflat  # noqa: F401 (the flat maps)
    except ImportError as err:
        raise UsageError(f"brain regions and maps need pycortex and nibabel ({err}): "
                         f"{INSTALL}") from None
    if printed.getvalue().strip():
        logger.debug("pycortex: %s", printed.getvalue().strip())
    filestore = str(anatomy.pycortex_db.resolve())
    cache = Path(cache_dir) / "pycortex" / run_utils.digest(filestore)
    cortex.options.config.set("basic", "cache", str(cache))
    if cortex.db.filestore != filestore:
        cortex.db.filestore = filestore
        cortex.db.reload_subjects()
        vars(cortex.db).pop("_memocache", None)  # pycortex memoises per subject name
    shipped = anatomy.pycortex_db / anatomy.subject / "cache"
    ours = cache / anatomy.subject / "cache"
    ours.mkdir(parents=True, exist_ok=True)
    for path in shipped.glob("*.npz"):
        if path.is_file() and not (ours / path.name).exists():
            (ours / path.name).symlink_to(path.resolve())
    return cortex


def thick_mask(cortex, anatomy, n_voxels=None):
    """The transform's ``mask_thick`` (z, y, x) bool: its voxels in C order are the response
    columns. Refused when ``n_voxels`` (the responses' columns) differs from its count."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "Mask not found, generating..."
            mask = cortex.db.get_mask(anatomy.subject, anatomy.transform, "thick")
    except PermissionError as err:
        raise DatasetError(f"{err.filename}: pycortex cannot write the thick mask it has to "
                           "make there; make the transform folder writable or fetch "
                           "mask_thick.nii.gz with datalad get") from None
    if n_voxels is not None and int(mask.sum()) != n_voxels:
        raise DatasetError(
            f"{anatomy.pycortex_db / anatomy.subject / 'transforms' / anatomy.transform}: "
            f"mask_thick has {int(mask.sum())} voxels but the responses of {anatomy.subject} "
            f"have {n_voxels} columns; the anatomy is another subject's or another release's")
    return mask


def response_voxels(dataset, subject):
    """The number of voxels (hf5 columns) of a subject's responses, or None without any."""
    if data_utils.subject_id(subject) not in dataset.subjects():
        return None
    stories = dataset.stories(subject)
    if not stories:
        return None
    return hdf5_io.hdf5_shape(dataset.response_path(subject, stories[0]))[1]


# ----------------------------------------------------------------------------- regions

def subject_regions(dataset, subject, source, cache_dir, annot=None, fsaverage=None):
    """The region file of a subject of ``dataset`` and a source, made once and kept in
    ``<cache_dir>/regions/``: returns its path. ``annot`` (lh, rh paths) and ``fsaverage``
    belong to the annot source."""
    if dataset.shared_space:
        return surface_regions(dataset, subject, source, cache_dir, annot)
    if source == "annot" and fsaverage is None:
        raise UsageError("the annot source on ds003020 needs --fsaverage: the annotation is "
                         "carried to the subject's surface through fsaverage's sphere")
    data_dir = dataset.root
    anatomy = subject_anatomy(dataset, subject,
                              ("pycortex",) if source == "overlays" else ("pycortex",
                                                                            "freesurfer"))
    inputs = source_files(anatomy, source, annot, fsaverage)
    for path in inputs:
        if not path.is_file():
            raise DatasetError(f"{path}: not found; " + (
                f"fetch it with `datalad get -d {data_dir} "
                f"{path.relative_to(Path(data_dir))}`" if path.is_relative_to(Path(data_dir))
                else "give the files of the annotation and its fsaverage"))
    settings = {"source": source, "subject": anatomy.subject, "transform": anatomy.transform,
                "inputs": run_utils.file_identity(inputs), "version": 1}
    path = run_utils.cache_path(Path(cache_dir) / "regions", f"{anatomy.subject}_{source}",
                                settings)[0].with_suffix(".json")
    if path.is_file():
        logger.info("regions of %s from %s: %s (cached)", anatomy.subject, source, path)
        return path
    cortex = import_cortex(anatomy, cache_dir)
    mask = thick_mask(cortex, anatomy, response_voxels(dataset, anatomy.subject))
    logger.info("%s: mapping the %d thick-mask voxels to their nearest vertices (pycortex)",
                anatomy.subject, int(mask.sum()))
    voxel_vertex = cortex.utils.get_vox_dist(anatomy.subject, anatomy.transform)[1][mask]
    counts = vertex_counts(cortex, anatomy)
    if source == "overlays":
        # pycortex warns of each empty ROI; those are logged together below
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            vertex_sets = cortex.get_roi_verts(anatomy.subject, mask=True)
        overlap = "drop"
    else:
        vertex_sets = annotation_vertex_sets(anatomy, counts, source, annot, fsaverage)
        overlap = "error"
    regions = regions_from_vertices(vertex_sets, voxel_vertex, counts[0], overlap)
    if source == "annot":
        regions.update(named_groups(regions))
    run_utils.write_json(path, regions, overwrite=True)
    logger.info("regions of %s from %s: %d regions and groups in %s", anatomy.subject, source,
                len(regions), path)
    return path


def surface_regions(dataset, subject, source, cache_dir, annot):
    """The region file of a dataset whose columns are surface vertices (Narratives'
    fsaverage6, left then right hemisphere): each vertex takes its label in ``annot`` (lh, rh
    annotations of that surface; their vertex count checked against ``subject``'s responses),
    with the named groups; kept in ``<cache_dir>/regions/``."""
    if source != "annot" or getattr(dataset, "space", None) != "fsaverage6":
        raise UsageError(f"--regions {source}: on {dataset.name} in {dataset.space} give a "
                         "region file, or --regions annot --annot LH RH (annotations of "
                         "fsaverage6, e.g. HCP-MMP1)")
    paths = [Path(path) for path in annot]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path}: not found; give the fsaverage6 annotations with "
                               "--annot LH RH")
    settings = {"source": source, "space": dataset.space, "version": 1,
                "inputs": run_utils.file_identity(paths)}
    path = run_utils.cache_path(Path(cache_dir) / "regions", f"{dataset.name}_{source}",
                                settings)[0].with_suffix(".json")
    if path.is_file():
        return path
    nibabel = import_nibabel()
    hemis = [read_annotation(nibabel, annot_path) for annot_path in paths]
    counts = [len(labels) for labels, _ in hemis]
    n_columns = dataset.n_columns(subject, dataset.stories(subject)[0])
    if sum(counts) != n_columns:
        raise DatasetError(f"{paths[0]}, {paths[1]}: {counts[0]} + {counts[1]} vertices but "
                           f"the responses have {n_columns}; the annotations are not of "
                           f"{dataset.space}")
    regions = regions_from_vertices(merged_vertex_sets(hemis), np.arange(n_columns), counts[0],
                                    "error")
    regions.update(named_groups(regions))
    run_utils.write_json(path, regions, overwrite=True)
    logger.info("regions of %s from %s: %d regions and groups in %s", dataset.space, source,
                len(regions), path)
    return path


def source_files(anatomy, source, annot=None, fsaverage=None):
    """The files a source's regions are made from (besides the pycortex surfaces)."""
    if source == "overlays":
        return [anatomy.pycortex_db / anatomy.subject / "overlays.svg"]
    if source == "aparc":
        return [anatomy.freesurfer / "label" / f"{hemi}.aparc.annot" for hemi in HEMISPHERES]
    return [*(anatomy.freesurfer / "surf" / f"{hemi}.sphere.reg" for hemi in HEMISPHERES),
            *map(Path, annot), *fsaverage_spheres(fsaverage)]


def vertex_counts(cortex, anatomy):
    """(left, right) vertex counts of the subject's pycortex surfaces."""
    left, right = cortex.db.get_surf(anatomy.subject, "fiducial", merge=False)
    return len(left[0]), len(right[0])


def fsaverage_spheres(fsaverage):
    """fsaverage's registration spheres: ``surf/?h.sphere.reg``, else ``surf/?h.sphere`` (the
    same coordinates for the atlas itself)."""
    surf = Path(fsaverage) / "surf"
    return [surf / f"{hemi}.sphere.reg" if (surf / f"{hemi}.sphere.reg").is_file()
            else surf / f"{hemi}.sphere" for hemi in HEMISPHERES]


def annotation_vertex_sets(anatomy, counts, source, annot=None, fsaverage=None):
    """Region name -> (n_vertices,) bool over the subject's merged (left then right) vertices,
    from the subject's aparc or from an fsaverage annotation carried by nearest vertex on the
    registration spheres. Hemisphere prefixes and suffixes of names (``L_A1_ROI``) are
    dropped, so that a parcel has one name in both hemispheres."""
    nibabel = import_nibabel()
    labels_per_hemi = []
    for index, hemi in enumerate(HEMISPHERES):
        if source == "aparc":
            path = anatomy.freesurfer / "label" / f"{hemi}.aparc.annot"
            labels, names = read_annotation(nibabel, path)
        else:
            path = Path(annot[index])
            atlas_labels, names = read_annotation(nibabel, path)
            atlas_sphere = fsaverage_spheres(fsaverage)[index]
            atlas_points = nibabel.freesurfer.read_geometry(str(atlas_sphere))[0]
            if len(atlas_points) != len(atlas_labels):
                raise DatasetError(f"{path}: {len(atlas_labels)} vertices but {atlas_sphere} "
                                   f"has {len(atlas_points)}; the annotation is not on that "
                                   "fsaverage (fsaverage5/6 are smaller)")
            sphere_reg = anatomy.freesurfer / "surf" / f"{hemi}.sphere.reg"
            subject_points = nibabel.freesurfer.read_geometry(str(sphere_reg))[0]
            labels = transfer_labels(atlas_points, atlas_labels, subject_points)
            path = sphere_reg
        if len(labels) != counts[index]:
            raise DatasetError(f"{path}: {len(labels)} vertices but the subject's pycortex "
                               f"{hemi} surfaces have {counts[index]}; the FreeSurfer and "
                               "pycortex folders are of different subjects or releases")
        labels_per_hemi.append((labels, names))
    return merged_vertex_sets(labels_per_hemi)


def merged_vertex_sets(labels_per_hemi):
    """Region name -> (n_vertices,) bool over the merged (left then right) vertices, from each
    hemisphere's (per-vertex label indices, label names); names as ``parcel_name`` gives
    them, unlabelled ones left out."""
    n_vertices = sum(len(labels) for labels, _ in labels_per_hemi)
    vertex_sets, offset = {}, 0
    for (labels, names), hemi in zip(labels_per_hemi, HEMISPHERES):
        for label in np.unique(labels[labels >= 0]):
            name = parcel_name(names[label], hemi)
            if name is not None:
                indicator = vertex_sets.setdefault(name, np.zeros(n_vertices, bool))
                indicator[offset + np.flatnonzero(labels == label)] = True
        offset += len(labels)
    return vertex_sets


def import_nibabel():
    try:
        import nibabel
        import nibabel.freesurfer  # noqa: F401
    except ImportError as err:
        raise UsageError(f"FreeSurfer regions need nibabel ({err}): {INSTALL}") from None
    return nibabel


def read_annotation(nibabel, path):
    """(per-vertex label indices (-1: none), label names) of a FreeSurfer .annot file."""
    try:
        labels, _, names = nibabel.freesurfer.read_annot(str(path))
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{path}: not a readable FreeSurfer annotation ({err}); download "
                           "it again") from None
    return np.asarray(labels), [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def transfer_labels(source_points, source_labels, target_points):
    """The label of each target point's nearest source point (a KD-tree query).

    Parameters
    ----------
    source_points : (n_source, 3) float, e.g. fsaverage's sphere
    source_labels : (n_source,) int
    target_points : (n_target, 3) float, e.g. a subject's ``sphere.reg`` (the same space)

    Returns
    -------
    (n_target,) labels, of ``source_labels``' dtype
    """
    from scipy.spatial import cKDTree

    nearest = cKDTree(np.asarray(source_points, np.float64)).query(
        np.asarray(target_points, np.float64))[1]
    return np.asarray(source_labels)[nearest]


def parcel_name(name, hemi):
    """The hemisphere-free name of an annotation label (``L_A1_ROI`` -> ``A1``, aparc names
    as they are), or None for an unlabelled one (``???``, ``unknown``)."""
    if name.lower() in UNLABELLED:
        return None
    prefix = {"lh": "L_", "rh": "R_"}[hemi]
    if name.startswith(prefix):
        name = name[len(prefix):]
    return name[:-len("_ROI")] if name.endswith("_ROI") else name


def regions_from_vertices(vertex_sets, voxel_vertex, n_left, overlap="drop"):
    """Voxel indices of each region, whole and per hemisphere, from vertex sets.

    Parameters
    ----------
    vertex_sets : dict name -> (n_vertices,) bool over the merged (left then right) vertices
    voxel_vertex : (n_voxels,) int, the nearest vertex of each voxel (response column)
    n_left : int, left-hemisphere vertices (the lower indices)
    overlap : "drop": a voxel in two regions is left out of both (pycortex's
        ``get_roi_masks``); "error": a ValueError (sets that should be a partition)

    Returns
    -------
    dict name -> sorted list of int voxel indices, for each name, ``<name>_lh`` and
    ``<name>_rh``; regions without a voxel are left out (logged).
    """
    voxel_vertex = np.asarray(voxel_vertex)
    memberships = {name: np.asarray(indicator, bool)[voxel_vertex]
                   for name, indicator in vertex_sets.items()}
    taken = np.sum(list(memberships.values()), axis=0) if memberships else np.zeros(0)
    if np.any(taken > 1):
        if overlap == "error":
            raise ValueError(f"{int(np.sum(taken > 1))} voxels fall in two regions")
        logger.info("%d voxels whose nearest vertex lies in two regions are left out of both",
                    int(np.sum(taken > 1)))
    left = voxel_vertex < n_left
    regions, empty = {}, []
    for name, member in memberships.items():
        member = member & (taken == 1)
        if not member.any():
            empty.append(name)
            continue
        regions[name] = np.flatnonzero(member).tolist()
        for hemi, side in zip(HEMISPHERES, (left, ~left)):
            if (member & side).any():
                regions[f"{name}_{hemi}"] = np.flatnonzero(member & side).tolist()
    if empty:
        logger.info("regions without a voxel in the thick mask, left out: %s",
                    ", ".join(sorted(empty)))
    return regions


def named_groups(regions):
    """The ``GROUPS`` whose parcels ``regions`` has (with those parcels; missing ones are
    logged), whole and per hemisphere (``late_language_lh`` of the ``*_lh`` parcels)."""
    groups = {}
    for group, parcels in GROUPS.items():
        present = [parcel for parcel in parcels if parcel in regions]
        if not present:
            continue
        if len(present) < len(parcels):
            logger.info("group %s without %s (no such region or no voxel)", group,
                        ", ".join(sorted(set(parcels) - set(present))))
        groups[group] = present
        for hemi in HEMISPHERES:
            members = [f"{parcel}_{hemi}" for parcel in present if f"{parcel}_{hemi}" in regions]
            if members:
                groups[f"{group}_{hemi}"] = members
    return groups


# ----------------------------------------------------------------------------- flat maps

def map_results(results_dir, layers, models=None, out_dir=None, cache_dir=None,
                height=MAP_HEIGHT, overwrite=False):
    """Flat maps of a ``brain_evaluate.py`` results folder (its run_config.json names the
    dataset); returns the paths written."""
    folder, cc_norm, voxels = _results_cc_norm(results_dir, layers, models)
    config = folder.arguments
    return write_flatmaps(out_dir or folder.folder, cc_norm, voxels,
                          _anatomy_dataset(config, results_dir), folder.results.subject,
                          cache_dir or config["cache_dir"], height, overwrite)


def view_results(results_dir, layers, models=None, out=None, cache_dir=None, overwrite=False):
    """The viewer (``write_viewer``) of a ``brain_evaluate.py`` results folder, with its
    regions (its regions.json, when it has one). Returns the file written."""
    from summaries import load_rois  # summaries imports this module

    folder, cc_norm, voxels = _results_cc_norm(results_dir, layers, models)
    config = folder.arguments
    region_file = folder.folder / "regions.json"
    n_voxels = len(next(iter(cc_norm.values())))
    regions = load_rois(region_file, n_voxels)[0] if region_file.is_file() else {}
    title = (f"{folder.results.subject}, {folder.results.test_story}: "
             f"{folder.results.scored_voxels} voxels with NC > {folder.results.nc_thr}")
    return write_viewer(out or folder.folder / "viewer.html", cc_norm, voxels,
                        _anatomy_dataset(config, results_dir), folder.results.subject,
                        cache_dir or config["cache_dir"], regions, title, overwrite)


def _anatomy_dataset(config, results_dir):
    """The ds003020 copy of a results folder's run (its run_config.json arguments), whose
    subject's pycortex anatomy the maps are drawn on; a UsageError for another dataset."""
    if config.get("dataset", "ds003020") != "ds003020":
        raise UsageError(f"{results_dir}: a run on {config['dataset']} "
                         f"({config.get('space')}); maps and the viewer draw on a ds003020 "
                         "subject's pycortex anatomy, and there is none for it here")
    return data_utils.Dataset(config["data_dir"])


def write_viewer(path, per_voxel, voxels, dataset, subject, cache_dir, regions=None,
                 title="brain alignment", overwrite=False):
    """The viewer (``brain_viewer``) at ``path`` of ``per_voxel`` cc_norm ((model, layer) ->
    (n_voxels,)): a map per (model, layer) and of each tuned model minus "pretrained", on the
    colour scales of ``write_flatmaps``; only ``voxels`` (the summary voxels' indices) are
    coloured. ``regions`` (name -> voxel indices) are listed with each map's mean over their
    shown voxels and outlined on demand. Returns ``path``."""
    import brain_viewer

    anatomy = subject_anatomy(dataset, subject)
    cortex = import_cortex(anatomy, cache_dir)
    n_voxels = len(next(iter(per_voxel.values())))
    mask = thick_mask(cortex, anatomy, n_voxels)
    shown = np.zeros(n_voxels, bool)
    shown[np.asarray(voxels, np.intp)] = True
    nearest = brain_viewer.vertex_voxels(cortex, anatomy, mask)
    maps = [{"name": f"cc_norm, {_map_name(label, minus)}, layer {layer}", "values": values,
             "colours": brain_viewer.vertex_colours(values, nearest, shown, cmap, low, high),
             "bar": brain_viewer.colour_bar(cmap, low, high)}
            for layer, label, minus, values, cmap, low, high in _colour_scales(per_voxel, shown)]
    listed = []
    for name, members in (regions or {}).items():
        members = np.asarray(members, np.int64)
        scored = members[shown[members]]
        listed.append({"name": name, "vertices": np.flatnonzero(np.isin(nearest, members)),
                       "means": [float(np.nanmean(m["values"][scored])) if scored.size
                                 else None for m in maps]})
    return brain_viewer.write_viewer(Path(path), f"{title} ({anatomy.subject})",
                                     brain_viewer.flat_surface(cortex, anatomy), maps, listed,
                                     overwrite)


def _results_cc_norm(results_dir, layers, models):
    """A results folder (``results_schema.read_results_folder``), its per-voxel cc_norm per
    (model label, layer) of ``models`` (None: all) and ``layers``, and its summary voxels."""
    folder = results_schema.read_results_folder(results_dir)
    voxels = np.load(folder.folder / run_utils.SUMMARY_VOXELS_NAME)
    cc_norm = {}
    for label in models or list(folder.results.models):
        for layer in layers:
            path = folder.folder / run_utils.voxel_results_name(label, layer)
            if not path.is_file():
                raise UsageError(f"{path}: not found; {folder.folder} has no layer {layer} of "
                                 f"{label!r} (see its results.csv)")
            with np.load(path) as arrays:
                cc_norm[label, layer] = arrays["cc_norm"]
    return folder, cc_norm, voxels


def write_flatmaps(out_dir, per_voxel, voxels, dataset, subject, cache_dir,
                   height=MAP_HEIGHT, overwrite=False, measure="cc_norm", suffix=""):
    """``flatmap_<model>_layer<k><suffix>.png`` per (model, layer) of ``per_voxel`` (dict ->
    (n_voxels,) per-voxel values of ``measure``, named in the titles; a layer's maps share one
    colour scale) and ``flatmap_<tuned>-minus-pretrained_layer<k><suffix>.png`` per tuned
    model when "pretrained" is one of them. Only ``voxels`` (indices: the voxels the summaries
    average over) are drawn. Returns the paths written."""
    anatomy = subject_anatomy(dataset, subject)
    cortex = import_cortex(anatomy, cache_dir)
    n_voxels = len(next(iter(per_voxel.values())))
    mask = thick_mask(cortex, anatomy, n_voxels)
    with_rois = shutil.which("inkscape") is not None
    if not with_rois:
        logger.info("Inkscape is not installed: flat maps without ROI outlines and labels")
    shown = np.zeros(n_voxels, bool)
    shown[np.asarray(voxels, np.intp)] = True
    return [flatmap(Path(out_dir) / flatmap_name(f"{label}-minus-pretrained" if minus else label,
                                                 layer, suffix),
                    cortex, anatomy, mask, values, shown,
                    f"{measure}, {_map_name(label, minus)}, layer {layer} ({anatomy.subject})",
                    cmap, low, high, height, with_rois, overwrite)
            for layer, label, minus, values, cmap, low, high in _colour_scales(per_voxel, shown)]


def _colour_scales(per_voxel, shown):
    """The maps of per-voxel values ((model, layer) -> (n_voxels,)) with their colour scales:
    per layer, each model's values from 0 to the largest 99th percentile of the layer's maps
    over the ``shown`` voxels ("inferno"), then, with a "pretrained" model, each other model
    minus it, centred on 0 ("RdBu_r"). Yields (layer, label, minus pretrained or not, values,
    cmap, low, high)."""
    for layer in sorted({layer for _, layer in per_voxel}):
        maps = {label: values for (label, at), values in per_voxel.items() if at == layer}
        top = max(_scale(values[shown]) for values in maps.values())
        for label, values in maps.items():
            yield layer, label, False, values, "inferno", 0.0, top
        if "pretrained" in maps:
            for label, values in maps.items():
                if label != "pretrained":
                    difference = values - maps["pretrained"]
                    limit = _scale(np.abs(difference[shown]))
                    yield layer, label, True, difference, "RdBu_r", -limit, limit


def _map_name(label, minus):
    return f"{label} minus pretrained" if minus else label


def flatmap_name(label, layer, suffix=""):
    return f"flatmap_{label.replace('/', '_').replace(' ', '_')}_layer{layer}{suffix}.png"


def _scale(values):
    """The top of a colour scale: the 99th percentile of the finite values (1 if none is
    positive)."""
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, 99)) if finite.size else 0.0
    return top if top > 0 else 1.0


def flatmap(path, cortex, anatomy, mask, values, shown, title, cmap, vmin, vmax,
            height=MAP_HEIGHT, with_rois=False, overwrite=False):
    """One flat map of per-voxel ``values`` (voxels not ``shown`` are transparent), written
    atomically as a PNG ``height`` pixels high; returns ``path``."""
    from matplotlib import pyplot as plt

    volume = np.full(mask.shape, np.nan, np.float32)
    volume[mask] = np.where(shown, values, np.nan)
    data = cortex.Volume(volume, anatomy.subject, anatomy.transform, cmap=cmap, vmin=vmin,
                         vmax=vmax)
    with contextlib.redirect_stdout(io.StringIO()):  # "Generating a flatmap cache"
        figure = cortex.quickflat.make_figure(
            data, height=height, with_rois=with_rois, with_labels=with_rois,
            with_curvature=False, with_colorbar=True, nanmean=True)
    figure.suptitle(title)
    with run_utils.atomic_output(path, overwrite) as tmp:
        figure.savefig(tmp, dpi=figure.dpi)
    plt.close(figure)
    return Path(path)


if __name__ == "__main__":
    raise SystemExit(main())
