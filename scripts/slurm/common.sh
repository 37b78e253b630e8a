# Shared by the Uni-Mlip SLURM launchers: the paper's pre-training recipe (Sec. 4.2) as
# overridable environment variables. Sourced, not run.
: "${TRAIN_DATA:?set TRAIN_DATA to the PMC-OA shards, e.g. /data/pmcoa/train/{00000..00164}.tar}"
: "${PRETRAINED:=}"                 # converted PMC-CLIP checkpoint (scripts/convert_pmc_clip.py); empty = from scratch
: "${MODEL:=unimlip-rn50}"
: "${GLOBAL_BATCH:=768}"            # paper: 768 over 8 V100
: "${EPOCHS:=100}"
: "${LR:=1e-4}"
: "${WARMUP:=2000}"
: "${WORKERS:=8}"
: "${PRECISION:=amp}"
: "${SIMCLR_START_EPOCH:=0}"        # paper: SimCLR + frozen BN from the start when initialised from PMC-CLIP
: "${LOGS:=$PWD/logs}"
: "${NAME:=unimlip-${SLURM_JOB_ID:-local}}"  # stable across requeues, so --resume latest finds the run
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # compute nodes: BiomedBERT from the HF cache or UNIMLIP_BIOMEDBERT_PATH
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

unimlip_train_args() {
    local gpus_total=$1
    if (( GLOBAL_BATCH % gpus_total )); then
        echo "GLOBAL_BATCH=$GLOBAL_BATCH is not divisible by $gpus_total GPUs" >&2
        return 1
    fi
    local args=(--model "$MODEL" --train-data "$TRAIN_DATA" --dataset-type webdataset
                --batch-size $(( GLOBAL_BATCH / gpus_total )) --epochs "$EPOCHS" --lr "$LR" --warmup "$WARMUP"
                --lr-scheduler cosine --opt adamw --precision "$PRECISION" --workers "$WORKERS"
                --save-frequency 1 --resume latest --report-to tensorboard
                --logs "$LOGS" --name "$NAME" --unimlip-simclr-start-epoch "$SIMCLR_START_EPOCH")
    [[ -n "$PRETRAINED" ]] && args+=(--pretrained "$PRETRAINED")
    [[ -n "${VAL_DATA:-}" ]] && args+=(--val-data "$VAL_DATA" --val-num-samples "${VAL_NUM_SAMPLES:?set VAL_NUM_SAMPLES}")
    printf '%s\n' "${args[@]}"
}
