# The errors of lib.compose: each case's declarations must fail, with a
# message that contains `expect` (run.sh checks it against both engines).
let
  host = extra: {
    igloo = {
      system = "x86_64-linux";
    }
    // extra;
  };
  force = fleet: builtins.deepSeq (builtins.mapAttrs (_: h: h // { modules = map (m: m.key or null) h.modules; }) fleet.hosts) true;
in
{
  include-cycle = {
    expect = ''include cycle in host "igloo": a -> b -> c -> a'';
    run =
      { compose, ... }:
      force (compose {
        aspects = {
          root.includes = [ "a" ];
          a.includes = [ "b" ];
          b.includes = [ "c" ];
          c.includes = [ "a" ];
        };
        hosts = host { aspects = [ "root" ]; };
      });
  };
  self-include = {
    expect = ''include cycle in host "igloo": a -> a'';
    run =
      { compose, ... }:
      force (compose {
        aspects.a.includes = [ "a" ];
        hosts = host { aspects = [ "a" ]; };
      });
  };
  cycle-through-a-function = {
    expect = ''include cycle in user "tux" of host "igloo": a -> a/0 -> a'';
    run =
      { compose, ... }:
      force (compose {
        aspects.a.includes = [ ({ user, ... }: { includes = [ "a" ]; }) ];
        hosts = host { users.tux.aspects = [ "a" ]; };
      });
  };
  unknown-aspect = {
    expect = ''aspect "nope" (included by web in host "igloo") is not declared'';
    run =
      { compose, ... }:
      force (compose {
        aspects.web.includes = [ "nope" ];
        hosts = host { aspects = [ "web" ]; };
      });
  };
  nested-of-a-parametric-aspect = {
    expect = ''"role" is parametric, and the nested aspects of a function are not visible'';
    run =
      { compose, ... }:
      force (compose {
        aspects.role = { host, ... }: { provides.sub = { }; };
        hosts = host { aspects = [ "role.sub" ]; };
      });
  };
  policies-do-not-settle = {
    expect = ''the policies of host "igloo" do not settle after 10 rounds: context n still change (set by "counter")'';
    run =
      { compose, ... }:
      force (compose {
        policies.counter = { n ? 0, ... }: { context.n = n + 1; };
        hosts = host { };
      });
  };
  policies-disagree = {
    expect = ''policies "a" and "b" set context.tier to different values for host "igloo"'';
    run =
      { compose, ... }:
      force (compose {
        policies = {
          a.context.tier = "gold";
          b.context.tier = "silver";
        };
        hosts = host { };
      });
  };
  policy-sets-the-host = {
    expect = ''policy "p" sets context.host for host "igloo"'';
    run =
      { compose, ... }:
      force (compose {
        policies.p.context.host = { };
        hosts = host { };
      });
  };
  policies-substitute-differently = {
    expect = ''policies substitute "a" with both "b" and "c"'';
    run =
      { compose, ... }:
      force (compose {
        policies = {
          p.substitutes.a = "b";
          q.substitutes.a = "c";
        };
        hosts = host { };
      });
  };
  deploy-disagreement = {
    expect = ''host "igloo": aspects "a" and "b" set deploy.confirmTimeout to different values; set it on the host to choose'';
    run =
      { compose, ... }:
      force (compose {
        aspects = {
          a.deploy.confirmTimeout = 10;
          b.deploy.confirmTimeout = 20;
        };
        hosts = host { aspects = [ "a" "b" ]; };
      });
  };
  unknown-aspect-attribute = {
    expect = ''aspect "web" has unknown attributes "nixOS"'';
    run =
      { compose, ... }:
      force (compose {
        aspects.web.nixOS = { };
        hosts = host { aspects = [ "web" ]; };
      });
  };
  parametric-result-not-an-aspect = {
    expect = ''aspect "web" in host "igloo" is a list, not an aspect'';
    run =
      { compose, ... }:
      force (compose {
        aspects.web = { host, ... }: [ ];
        hosts = host { aspects = [ "web" ]; };
      });
  };
  dotted-name = {
    expect = ''aspect name "a.b" is not a plain name'';
    run =
      { compose, ... }:
      force (compose {
        aspects."a.b" = { };
        hosts = host { };
      });
  };
  missing-system = {
    expect = ''host "igloo" needs system'';
    run =
      { compose, ... }:
      force (compose {
        hosts.igloo = { };
      });
  };
  unknown-declaration = {
    expect = ''the argument of lib.compose has unknown attributes "host"'';
    run = { compose, ... }: force (compose { host = { }; });
  };
  unknown-setting = {
    expect = "unknown settings: engin";
    run = { composeWith, ... }: force ((composeWith { engin = "fast"; }) { });
  };
  unknown-engine = {
    expect = ''unknown engine "quick"'';
    run = { composeWith, ... }: force ((composeWith { engine = "quick"; }) { });
  };
  excludes-not-names = {
    expect = ''policy "p": excludes must be a list of aspect names'';
    run =
      { compose, ... }:
      force (compose {
        policies.p.excludes = [ 1 ];
        hosts = host { };
      });
  };
  user-not-an-attribute-set = {
    expect = ''user "tux" of host "igloo" is a list, not an attribute set'';
    run =
      { compose, ... }:
      force (compose {
        hosts = host { users.tux = [ "a" ]; };
      });
  };
  host-not-an-attribute-set = {
    expect = ''host "igloo" is a string, not an attribute set'';
    run = { compose, ... }: force (compose { hosts.igloo = "x86_64-linux"; });
  };
  provides-in-a-function = {
    expect = ''aspect "role" in host "igloo": provides is only seen on a named aspect that is an attribute set'';
    run =
      { compose, ... }:
      force (compose {
        aspects.role = { host, ... }: { provides.sub = { }; };
        hosts = host { aspects = [ "role" ]; };
      });
  };
  provides-inline = {
    expect = ''aspect "host igloo/0": provides is only seen on a named aspect'';
    run =
      { compose, ... }:
      force (compose {
        hosts = host { aspects = [ { provides.sub = { }; } ]; };
      });
  };
}
