"""``python -m gradjob.trace``: the supported-operations list made from the registry, to paste into
README. Its own module because ``-m gradjob.trace.ops`` runs ``ops`` a second time (the package
has imported it already) and Python warns."""

from gradjob.trace.ops import supported

print(supported())
