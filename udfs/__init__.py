"""clipsift's computing side: numpy kernels (``clipsift.udfs.kernels``) and thin pandas-UDF wrappers."""
