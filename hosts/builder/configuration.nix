# builder: a dedicated build host. It builds the fleet's closures (the other
# hosts name it as their `waymark.deploy.buildHost`) and keeps the known-good
# ones alive with GC roots, created and recorded by its `deploy` user. It runs
# no tests, so it declares no harness.
{ ... }:
{
  imports = [ ../hardware.nix ];

  networking.hostName = "builder";

  users.users.deploy = {
    isNormalUser = true;
    openssh.authorizedKeys.keys = [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExampl waymark@deployer"
    ];
  };

  waymark.knownGood.enable = true;

  waymark.deploy = {
    enable = true;
    targetHost = "builder.example.com";
    sshUser = "deploy";
    tags = [ "build" ];
    allowBuildOnTarget = true;
    healthChecks = [
      {
        name = "nix-daemon";
        command = "systemctl is-active --quiet nix-daemon.service";
      }
    ];
  };

  system.stateVersion = "26.05";
}
