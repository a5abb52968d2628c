"""The latent contract of the digit models (``dcgan``, ``cgan``, ``stylegan_lite``)."""

Z_DIM = 64  # z [N, Z_DIM], normal
N_CLASSES = 10  # cgan's label [N] int64 in 0..N_CLASSES-1 (the ten digits)
