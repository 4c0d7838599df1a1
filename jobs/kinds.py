"""The job kinds this package publishes to memq (entry-point group ``memq.kinds``).

Only names here: importing this module must stay cheap, it runs at every submit.
"""

from memq.job import KindSpec

MEM_TRAIN = KindSpec(
    name="mem.train",
    target="jobs.mem.train.train:run",
    validate="jobs.mem.validate:validate_train",
    validate_grid="jobs.mem.validate:validate_train_grid",
    description="train one Memory Encoding Model (whole brain or one ROI) and keep its top-k checkpoints",
)
MEM_TOPYNECK = KindSpec(
    name="mem.topyneck",
    target="jobs.mem.train.topyneck:run",
    validate="jobs.mem.validate:validate_topyneck",
    description="train per-subject models and gather their RetinaMapper and LayerSelector weights",
)
MEM_IMPORT = KindSpec(
    name="mem.import",
    target="jobs.mem.reference.import_job:run",
    validate="jobs.mem.ensemble.stage_params:validate_import",
    description="convert a reference (huzeyann/MemoryEncodingModel) run's checkpoints and register them as this "
    "job's, for soups and ensembles (params: the run's Mem settings, checkpoints; sha256)",
)
MEM_SOUP = KindSpec(
    name="mem.soup",
    target="jobs.mem.ensemble.soup:run",
    validate="jobs.mem.ensemble.stage_params:validate_soup",
    description="sync a trained job's checkpoints and average them into a soup (params source_job, recipe "
    "uniform|greedy); greedy selects on val1, reports val2 (the reference's greedy soup with the trained job's "
    "SWITCHES.GREEDY_SOUP val2_twice)",
)
MEM_PREDICT = KindSpec(
    name="mem.predict",
    target="jobs.mem.ensemble.predict:run",
    validate="jobs.mem.ensemble.stage_params:validate_predict",
    description="predict one split with a trained job's soup (params source_job, recipe, split)",
)
MEM_ENSEMBLE = KindSpec(
    name="mem.ensemble",
    target="jobs.mem.ensemble.combine:run",
    validate="jobs.mem.ensemble.stage_params:validate_ensemble",
    description="stitch ROI models into whole-brain predictions, average schemes, write the Algonauts 2023 "
    "submission, ensemble.json and val2 scores.json (params grid, out, recipe, jobs; schemes, partial)",
    gpus=0,
)
DATA_PREPARE_NSD = KindSpec(
    name="data.prepare_nsd",
    target="jobs.data.nsd:run",
    validate="jobs.data.params:validate_prepare_nsd",
    description="prepare one subject of NSD + Algonauts 2023 into the training layout (params nsd_dir, alg_dir, "
    "out, subject; space, beta, fsaverage_dir, force)",
    gpus=0,
)
DATA_ATLAS_W = KindSpec(
    name="data.atlas_w",
    target="jobs.data.atlas_w:run",
    validate="jobs.data.params:validate_atlas_w",
    description="add the model-defined atlas W (ROIs w_1..w_9) to every subject from a whole-brain soup (params "
    "data_dir; source_job + recipe: a mem.train job's registered soup, or soup: a file; k, seed, device, force)",
)
DATA_CACHE_FEATURES = KindSpec(
    name="data.cache_features",
    target="jobs.data.features:run",
    validate="jobs.data.params:validate_cache_features",
    description="cache DINOv2 ViT-L/14 CLS features of the memory images in images.h5 (params data_dir; weights: "
    "installed name, default dinov2_vitl14; alg_dir writes images.h5 from the Algonauts PNGs first if missing)",
)
EVAL_REPORT = KindSpec(
    name="eval.report",
    target="jobs.eval.report_job:run",
    validate="jobs.eval.report_job:validate_report",
    description="the HTML report of a grid's trained models (`memq report` as a job; params out; ensemble, truth, "
    "data, grid: default this job's)",
    gpus=0,
)
# the kinds whose jobs are trained ROI models: what an ensemble stitches and a report shows
TRAINED_KINDS = (MEM_TRAIN.name, MEM_IMPORT.name)
MINDEYE2_RUN = KindSpec(
    name="mindeye2.run",
    target="jobs.mindeye2.run:run",
    validate="jobs.mindeye2.params:validate",
    description="run one MindEye2 notebook (params repo, notebook, args) as its README and .slurm files do: "
    "converted with jupyter nbconvert into the job's directory, Train through accelerate launch (DeepSpeed "
    "stage 2 on several GPUs) with accel.slurm's environment and a port of its own",
)
