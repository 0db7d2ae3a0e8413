# Policies decide aspects by what a host is. They may add to the context
# (read by aspects as arguments), include, exclude or substitute aspects.
{
  # Every host gets its site into the context, and the site's tag.
  site =
    { host, ... }:
    {
      context.site = host.site;
      includes = [ "site" ];
    };
}
