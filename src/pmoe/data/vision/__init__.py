"""Image-classification data for the vision models (WRN, ViT-MoE): one container, the standard on-disk formats,
seeded splits, subsets and augmentation, fast batches, and spurious-correlation sets."""
from __future__ import annotations

from pmoe.data.vision.augment import Augment, augment_batch, crop_flip
from pmoe.data.vision.batches import ImageBatches
from pmoe.data.vision.celeba import CelebAConfig, load_celeba, read_celeba_annotations
from pmoe.data.vision.cifar import load_cifar
from pmoe.data.vision.dataset import STATS, ImageDataset, channel_stats, normalize
from pmoe.data.vision.files import FileImageConfig, ImageFiles
from pmoe.data.vision.folder import ImageFolderConfig, load_image_folder
from pmoe.data.vision.mnist import CanvasImageConfig, load_canvas_images, load_idx_images
from pmoe.data.vision.registry import (DATASETS_ROOT, IMAGE_DATASETS, CelebASpuriousConfig, Cifar100Config,
                                       FashionSpuriousConfig, SpuriousConfig, make_image_dataset)
from pmoe.data.vision.splits import (SPLITS, SplitConfig, balanced_subset, seeded_generator, stratified_split,
                                     train_val_test)
from pmoe.data.vision.spurious import attribute, attribute_contrast, class_sets, make_spurious, stamp_corner

__all__ = ["Augment", "CanvasImageConfig", "CelebAConfig", "CelebASpuriousConfig", "Cifar100Config",
           "DATASETS_ROOT", "FashionSpuriousConfig", "FileImageConfig", "IMAGE_DATASETS", "ImageBatches",
           "ImageDataset", "ImageFiles", "ImageFolderConfig", "SPLITS", "STATS", "SplitConfig", "SpuriousConfig",
           "attribute", "attribute_contrast", "augment_batch", "balanced_subset", "channel_stats", "class_sets",
           "crop_flip", "load_canvas_images", "load_celeba", "load_cifar", "load_idx_images", "load_image_folder",
           "make_image_dataset", "make_spurious", "normalize", "read_celeba_annotations", "seeded_generator",
           "stamp_corner", "stratified_split", "train_val_test"]
