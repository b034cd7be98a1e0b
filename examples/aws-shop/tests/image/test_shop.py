"""Runs on the test instance through kiln's exec bridge (over SSM on AWS)."""


def test_puppet_wrote_the_config(host):
    conf = host.file("conf/shop.conf")
    assert conf.exists and conf.mode == 0o644
    assert "greeting=hello from puppet" in conf.content_string


def test_ansible_wrote_the_features(host):
    features = host.file("conf/features.conf")
    assert features.exists and "checkout=enabled" in features.content_string


def test_the_database_password_is_in_the_service_env(host):
    assert host.run('test -n "$DB_PASSWORD"').rc == 0
