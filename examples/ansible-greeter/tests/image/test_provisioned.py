"""What the Ansible role did to the image (testinfra, run by `kiln test` in a throwaway container)."""


def test_curl_is_installed(host):
    assert host.package("curl").is_installed


def test_config_is_readable_by_the_apps_group_only(host):
    conf = host.file("/etc/greeter/greeter.conf")
    assert conf.is_file
    assert conf.mode == 0o640
    assert conf.user == "root" and conf.group == "nogroup"
    assert conf.contains("^provisioner = ansible$")


def test_package_lists_are_not_left_in_the_image(host):
    assert host.run("ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$'").stdout == ""


def test_ansible_itself_is_not_in_the_image(host):
    assert host.run("command -v ansible-playbook").rc != 0
