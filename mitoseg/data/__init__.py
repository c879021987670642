"""data: images as arrays. Image files read by what they declare (image_files), stacks and folders
of slices paired with their masks (stacks), the grey-level scaling rule (scaling), the slice split,
the folds and the patch tiling (patches), the built-in synthetic EM data (synthetic) and the study's
cache of decoded volumes and patches (cache).

May import: core. Needs numpy (and tifffile for TIFF files)."""
