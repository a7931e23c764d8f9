#!/usr/bin/perl
# The lab's echo backend: answers every HTTP request with
# "echo from $ECHO_NAME: <method> <path>" (perl-base only: no extra package).
use strict;
use warnings;
use IO::Socket::INET;
$| = 1;
my $name = $ENV{ECHO_NAME} // 'echo';
my $port = $ENV{ECHO_PORT} // 5000;
my $server = IO::Socket::INET->new(LocalAddr => "0.0.0.0:$port", Listen => 64, ReuseAddr => 1)
    or die "echo: cannot listen on $port: $!\n";
$SIG{CHLD} = 'IGNORE';
$SIG{TERM} = sub { exit 0 };
print "echo: $name listening on $port\n";
while (my $c = $server->accept) {
    next if fork;
    $c->autoflush(1);
    my $line = <$c> // '';
    while (my $h = <$c>) { last if $h =~ /^\r?\n$/; }
    my ($method, $path) = $line =~ /^(\S+)\s+(\S+)/ ? ($1, $2) : ('?', '?');
    my $body = "echo from $name: $method $path\n";
    print $c "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
    close $c;
    exit 0;
}
