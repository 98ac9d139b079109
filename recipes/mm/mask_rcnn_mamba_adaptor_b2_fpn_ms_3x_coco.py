# MMDetection 3.x config: the 3x schedule (36 epochs, LR x0.1 at 27 and 33) with multi-scale training (short
# side 480-800, long side <= 1333), otherwise as mask_rcnn_mamba_adaptor_b2_fpn_1x_coco.py.
# Paper (b2): 49.1 box AP / 44.8 mask AP.
_base_ = ["./mask_rcnn_mamba_adaptor_b2_fpn_1x_coco.py"]

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(
        type="RandomChoiceResize",
        scales=[(1333, s) for s in range(480, 801, 32)],
        keep_ratio=True,
    ),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
