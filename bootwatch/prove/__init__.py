"""Boot proofs: an entry's own kernel and initramfs booted in a throwaway QEMU virtual machine.

* :mod:`~bootwatch.prove.cmdline`: the proof's kernel command line, from the entry's options;
* :mod:`~bootwatch.prove.console`: what the serial console says: passed, failed (and why), or
  not yet decided;
* :mod:`~bootwatch.prove.vm`: the ``qemu-system-x86_64`` process (argv, acceleration, bounds,
  cleanup on every path out);
* :mod:`~bootwatch.prove.proof`: one entry's proof, and where its result and console log are kept.

The package never imports the cache, the daemon or the command line.
"""
