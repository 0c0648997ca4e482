"""One module per aggregate, each used by both backends through a :class:`Kernel`
(``storage/sql/kernel.py``); the backend packages hold only their kernel, composition root and
migrations."""
