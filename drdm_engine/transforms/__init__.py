"""Training-pipeline transforms: ``monai.RandDRDMd`` (extra ``drdm-engine[monai]``) and
``torchio.RandomDRDM`` (extra ``drdm-engine[torchio]``). Each module imports its framework; import
the one you use."""
