"""predict: applying trained models. A model file checked and loaded, its tiling and recorded input
scaling, a stack predicted tile by tile (model); input stacks put on the model's training scale and
the TIFF written (files); a bundle's members averaged (bundle); each architecture's best run of a
study and the slices to show (best_runs); the ensemble of the confirmation runs scored on their
test slices (ensemble).

May import: core, data, cell, analysis. Needs numpy and, to predict, TensorFlow/Keras (imported
inside the functions that predict)."""
