# The greeter app's system configuration: a probe tool and its config file.
class greeter (
  String $greeting = 'hello',
  String $config_dir = '/etc/greeter',
) {
  package { 'curl':
    ensure => installed,
  }

  file { $config_dir:
    ensure => directory,
    mode   => '0755',
  }

  file { "${config_dir}/greeter.conf":
    ensure  => file,
    owner   => 'root',
    group   => 'nogroup',
    mode    => '0640',
    content => epp('greeter/greeter.conf.epp', { 'greeting' => $greeting }),
  }
}
