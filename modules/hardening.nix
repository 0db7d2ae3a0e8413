# The systemd sandbox shared by the units Waymark writes itself (the generic
# and Drone runners, the sweeps) and laid over the upstream runner units
# (./runner-kinds.nix says how). A plain attrset, imported by
# ./runner-kinds.nix and ./sweeps.nix; not a module.
#
# Left out on purpose: MemoryDenyWriteExecute (breaks JITs such as node and
# the JVM, which tests run), RestrictNamespaces and PrivateUsers (test suites
# create namespaces; nix builds go through the daemon either way), and
# PrivateNetwork (tests fetch and talk to services).
{
  NoNewPrivileges = true;
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  ProtectClock = true;
  ProtectHostname = true;
  ProtectKernelLogs = true;
  ProtectKernelModules = true;
  ProtectKernelTunables = true;
  ProtectControlGroups = true;
  RestrictSUIDSGID = true;
  RestrictRealtime = true;
  LockPersonality = true;
  SystemCallArchitectures = "native";
  UMask = "0027";
}
