"""Applying trained models: a model file checked and loaded, input stacks put on its training scale,
a stack predicted tile by tile, a bundle's members averaged, each architecture's best run found,
and the ensemble of the confirmation runs scored on their test slices."""
