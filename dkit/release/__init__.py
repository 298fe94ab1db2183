"""Release tooling (`dkit.release`): the offline wheelhouse a device installs from (`wheelhouse`). Not part of the
kit's contracts (`dkit.core`) nor of the device runtime."""
