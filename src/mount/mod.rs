//! Shifted views of an image: overlayfs (metacopy) and idmapped mounts.
