"""What the Puppet manifest did to the image (testinfra, run by `kiln test` in a throwaway
container), and what the puppet step took away again."""


def test_curl_is_installed(host):
    assert host.package("curl").is_installed


def test_config_is_readable_by_the_apps_group_only(host):
    conf = host.file("/etc/greeter/greeter.conf")
    assert conf.is_file
    assert conf.mode == 0o640
    assert conf.user == "root" and conf.group == "nogroup"
    assert conf.contains("^provisioner = puppet$")


def test_puppet_was_removed_after_the_step(host):
    assert not host.package("puppet-agent").is_installed
    assert not host.package("ruby").is_installed
    assert host.run("command -v puppet").rc != 0


def test_package_lists_are_not_left_in_the_image(host):
    assert host.run("ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$'").stdout == ""
