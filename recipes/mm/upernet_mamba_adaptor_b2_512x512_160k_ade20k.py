# mmsegmentation 1.x config: UperNet + Mamba-Adaptor-b2 on ADE20K, the supplementary's setup (VMamba/Swin
# UperNet recipe): 160k iterations, 512x512 crops, batch 16 (8 GPUs x 2), AdamW lr 6e-5 wd 0.01, 1,500-iter
# linear warm-up then poly decay; single-scale and multi-scale + flip test (ratios 0.5-1.75, `--tta`).
# Paper: 58M params, 971G FLOPs, 47.8 / 48.6 mIoU (SS / MS).
#   pip install "adaptor_peft[dense]" mmsegmentation   (mmcv / mmengine per mmseg's install guide)
#   bash tools/dist_train.sh recipes/mm/upernet_mamba_adaptor_b2_512x512_160k_ade20k.py 8
#   bash tools/dist_test.sh recipes/mm/upernet_mamba_adaptor_b2_512x512_160k_ade20k.py CKPT 8 --tta
# b1: arch="mamba_adaptor_b1", drop_path_rate=0.1, in_channels=[48, 96, 192, 384], auxiliary in_channels=192.
# PEFT (frozen pretrained VMamba-T + adaptors): arch="vmamba_tiny_s1l8", pretrained=<converted official file>,
#   adaptor=dict(temporal=True, spatial=True, num_heads=4, num_points=4, dilations=[1, 2, 3]),
#   freeze_base=True.
_base_ = [
    "mmseg::_base_/models/upernet_r50.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]
custom_imports = dict(imports=["adaptor_peft.dense.mm_register"], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type="MambaAdaptorPyramid",
        arch="mamba_adaptor_b2",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        pretrained="runs/imagenet_b2/model_ema.safetensors",
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768], channels=512, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=384, channels=256, num_classes=150, norm_cfg=norm_cfg),
)

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0), "outnorm": dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
