# MMDetection 3.x config: Mask R-CNN + FPN + Mamba-Adaptor-b2 on COCO, the supplementary's settings: AdamW lr
# 1e-4 (wd 0.05), batch 16 (8 GPUs x 2); 1x = 12 epochs, LR x0.1 at epochs 8 and 11, 500-iter linear warm-up,
# single scale 1333x800. Paper (b2): 47.3 box AP / 43.4 mask AP, 259G FLOPs.
#   pip install "adaptor_peft[dense]" mmdet   (mmcv / mmengine per mmdet's install guide)
#   bash tools/dist_train.sh recipes/mm/mask_rcnn_mamba_adaptor_b2_fpn_1x_coco.py 8
# 3x: recipes/mm/mask_rcnn_mamba_adaptor_b2_fpn_ms_3x_coco.py.
# b1: arch="mamba_adaptor_b1", drop_path_rate=0.1, neck in_channels=[48, 96, 192, 384].
# The paper also names Cascade Mask R-CNN (supplementary §3.2): swap the
# _base_ model for "mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py" with the same backbone/neck/optimizer.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/datasets/coco_instance.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["adaptor_peft.dense.mm_register"], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="MambaAdaptorPyramid",
        arch="mamba_adaptor_b2",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        pretrained="runs/imagenet_b2/model_ema.safetensors",
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(_delete_=True, type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0), "outnorm": dict(decay_mult=0.0)}),
)
# schedule_1x already holds: LinearLR(start_factor=0.001, 500 iters) + MultiStepLR([8, 11]), 12 epochs.
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
auto_scale_lr = dict(enable=False, base_batch_size=16)
