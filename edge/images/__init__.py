"""Image files from outside (`dkit.edge.images`): their headers read and bounded before any decode (`header`), a
bounded decode of untrusted bytes (`decode`), transparency and EXIF orientation (`alpha`). Beside the bundle at the
bottom of the edge runtime: the device check, the file sources and the kiosk all read images through it."""
