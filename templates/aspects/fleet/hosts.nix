# The fleet's hosts: what each one is (its aspects and facts) and how
# Waymark reaches it. Facts like `role` and `site` are read by aspects and
# policies as `host.role`, `host.site`.
{
  builder = {
    system = "x86_64-linux";
    role = "builder";
    site = "eu";
    aspects = [ "builder" ];
    deploy.targetHost = "192.0.2.10";
  };

  web1 = {
    system = "x86_64-linux";
    role = "web";
    site = "eu";
    aspects = [ "web" ];
    users.ops.aspects = [ "operator" ];
    deploy.targetHost = "192.0.2.11";
  };

  web2 = {
    system = "x86_64-linux";
    role = "web";
    site = "us";
    aspects = [ "web" ];
    deploy.targetHost = "192.0.2.12";
  };
}
