"""ImageBind features (4M-21's imagebind and imagebind_global): no labeler, and why.

4M-21 labelled ImageBind ViT-H/14 features (apple/ml-4m README_DATA.md): a patch map at
the 14 px grid and a global vector, both 1280 wide (the registry's IMAGEBIND and
IMAGEBIND_GLOBAL: the vision trunk's width, not the 1024-d joint embedding its head
projects to), tokenized like DINOv2's (tok_imagebind@224: 16 x 16 tokens;
tok_imagebind_global: 16 tokens).

transformers has no ImageBind model (no `ImageBindModel` in transformers 5.x), and Meta
publishes facebookresearch/ImageBind only as source and weights on its own server. The
PyPI distributions named `imagebind*` are unofficial repackagings, not maintained by
Meta, that pull torchvision, pytorchvideo and timm and download the checkpoint at run
time. fourm therefore ships no ImageBind labeler. The steps one would follow mirror
`pseudolabel/dinov2.py`: the vision trunk's last-layer patch tokens as [G, G, 1280] and
its class token as [1280], the whole photo at 224 px (ImageBind's CLIP normalization).
"""
