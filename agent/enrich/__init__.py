"""Who did it: the process and container identity an event is enriched with.

  proctree.py   the process tree, keyed by exec id (ancestry, cached process objects)
  cgroups.py    cgroup v2 id -> cgroup path
  containers.py cgroup id -> Container (resolver: path -> runtime -> state files + netns)
  runtimes/     one reader per container runtime (docker, podman, runc, containerd/CRI-O
                bundles), cgroup path parsing, and the ContainerRuntime Protocol
  netns.py      a network namespace's interfaces and addresses
  boltdb.py     read-only bbolt reader (podman's libpod database)
"""
