"""clipsift's computing side: numpy kernels (``udfs.kernels``) and thin pandas-UDF wrappers."""
